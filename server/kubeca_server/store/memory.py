"""An in-memory store, for fast unit tests of the layers above the store.

Never a substitute for the SQLite and PostgreSQL contract tests: it lives and dies
with the process, and it is shared by threads only. A unit of work holds the lock and
works on copies of the tables, which replace the originals only when it commits, so a
unit that raises changes nothing.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kubeca_client.errors import NotFound, Unavailable

from kubeca_server.ledger.chain import GENESIS, ChainRow, Checkpoint, chain_row
from kubeca_server.store.records import (
    CertificateRow,
    GenerationRow,
    GenerationState,
    InventoryCursor,
    InventoryQuery,
    TokenCursor,
    TokenRecord,
)


@dataclass
class _Tables:
    chain: list[ChainRow] = field(default_factory=list)
    certificates: dict[str, CertificateRow] = field(default_factory=dict)
    claims: dict[str, datetime] = field(default_factory=dict)
    tokens: dict[str, TokenRecord] = field(default_factory=dict)
    crl_numbers: dict[str, int] = field(default_factory=dict)
    checkpoints: dict[int, Checkpoint] = field(default_factory=dict)
    generations: dict[tuple[str, int], GenerationRow] = field(default_factory=dict)

    def copy(self) -> _Tables:
        # Records are frozen, so copying the containers copies the state.
        return _Tables(
            list(self.chain),
            dict(self.certificates),
            dict(self.claims),
            dict(self.tokens),
            dict(self.crl_numbers),
            dict(self.checkpoints),
            dict(self.generations),
        )


class MemoryStore:
    """The ``Store`` in this process's memory."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tables = _Tables()
        self.available = True  # tests turn this off to play an unreachable database

    @contextmanager
    def unit(self, *, read_only: bool = False) -> Iterator[_Unit]:
        with self._lock:
            if not self.available:
                raise Unavailable("the in-memory store was marked unavailable")
            working = self._tables.copy()
            yield _Unit(working)
            if not read_only:
                self._tables = working

    def probe(self) -> None:
        if not self.available:
            raise Unavailable("the in-memory store was marked unavailable")

    def close(self) -> None:
        """Nothing to release: the tables live as long as this object."""


class _Chain:
    def __init__(self, t: _Tables) -> None:
        self._t = t

    def append(self, record: Mapping[str, Any]) -> ChainRow:
        last = self._t.chain[-1] if self._t.chain else None
        row = chain_row(last.seq + 1 if last else 1, last.hash if last else GENESIS, record)
        self._t.chain.append(row)
        return row

    def head(self) -> ChainRow | None:
        return self._t.chain[-1] if self._t.chain else None

    def rows(self, after: int = 0, limit: int = 1000) -> list[ChainRow]:
        return [r for r in self._t.chain if r.seq > after][:limit]


class _Inventory:
    def __init__(self, t: _Tables) -> None:
        self._t = t

    def add(self, row: CertificateRow) -> None:
        if row.serial in self._t.certificates:
            raise ValueError(f"serial {row.serial} is in the inventory already")
        self._t.certificates[row.serial] = row

    def find(self, serial: str) -> CertificateRow | None:
        return self._t.certificates.get(serial)

    def current(self, request_fingerprint: str, now: datetime) -> CertificateRow | None:
        candidates = [
            r
            for r in self._t.certificates.values()
            if r.request_fingerprint == request_fingerprint
            and r.revoked_at is None
            and now < r.not_after - (r.not_after - r.not_before) / 3
        ]
        return max(candidates, key=lambda r: r.not_before, default=None)

    def page(
        self, query: InventoryQuery, after: InventoryCursor | None, limit: int
    ) -> list[CertificateRow]:
        def matches(r: CertificateRow) -> bool:
            return (
                (not query.authority or r.authority == query.authority)
                and (not query.profile or r.profile == query.profile)
                and (query.expiring_before is None or r.not_after <= query.expiring_before)
                and (not query.revoked_only or r.revoked_at is not None)
                and (after is None or (r.not_after, r.serial) > (after.not_after, after.serial))
            )

        rows = sorted(filter(matches, self._t.certificates.values()), key=_order)
        return rows[:limit]

    def revoke(self, serial: str, when: datetime, reason: str) -> bool:
        row = self._t.certificates.get(serial)
        if row is None or row.revoked_at is not None:
            return False
        self._t.certificates[serial] = dataclasses.replace(
            row, revoked_at=when, revocation_reason=reason
        )
        return True

    def revoked(self, authority: str) -> list[CertificateRow]:
        rows = [
            r
            for r in self._t.certificates.values()
            if r.authority == authority and r.revoked_at is not None
        ]
        return sorted(rows, key=lambda r: r.revoked_at or r.not_before)

    def count_unexpired(self, authority: str, issuer_key_id: str, now: datetime) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self._t.certificates.values():
            if (
                r.authority == authority
                and r.issuer_key_id == issuer_key_id
                and r.not_after > now
                and r.revoked_at is None
            ):
                counts[r.profile] = counts.get(r.profile, 0) + 1
        return counts


def _order(row: CertificateRow) -> tuple[datetime, str]:
    return row.not_after, row.serial


class _Claims:
    def __init__(self, t: _Tables) -> None:
        self._t = t

    def claim(self, request_fingerprint: str, now: datetime, stale_before: datetime) -> bool:
        held = self._t.claims.get(request_fingerprint)
        if held is not None and held >= stale_before:
            return False
        self._t.claims[request_fingerprint] = now
        return True

    def release(self, request_fingerprint: str) -> None:
        self._t.claims.pop(request_fingerprint, None)


class _Tokens:
    def __init__(self, t: _Tables) -> None:
        self._t = t

    def add(self, token: TokenRecord) -> None:
        if token.token_id in self._t.tokens:
            raise ValueError(f"token {token.token_id} exists already")
        self._t.tokens[token.token_id] = token

    def find(self, token_id: str) -> TokenRecord | None:
        return self._t.tokens.get(token_id)

    def page(self, now: datetime, after: TokenCursor | None, limit: int) -> list[TokenRecord]:
        live = [
            t
            for t in self._t.tokens.values()
            if t.expires_at > now
            and (after is None or (t.expires_at, t.token_id) < (after.expires_at, after.token_id))
        ]
        return sorted(live, key=lambda t: (t.expires_at, t.token_id), reverse=True)[:limit]

    def revoke(self, token_id: str, now: datetime) -> bool:
        token = self._t.tokens.get(token_id)
        if token is None or token.revoked:
            return False
        self._t.tokens[token_id] = dataclasses.replace(token, revoked=True)
        return True

    def consume(self, token_id: str, profile: str, now: datetime) -> bool:
        token = self._t.tokens.get(token_id)
        if (
            token is None
            or token.revoked
            or token.expires_at <= now
            or profile not in token.profiles
            or profile in token.used_profiles
        ):
            return False
        used = tuple(sorted((*token.used_profiles, profile)))
        self._t.tokens[token_id] = dataclasses.replace(token, used_profiles=used)
        return True

    def release(self, token_id: str, profile: str) -> None:
        token = self._t.tokens.get(token_id)
        if token is not None:
            used = tuple(p for p in token.used_profiles if p != profile)
            self._t.tokens[token_id] = dataclasses.replace(token, used_profiles=used)


class _CrlNumbers:
    def __init__(self, t: _Tables) -> None:
        self._t = t

    def next(self, authority: str) -> int:
        self._t.crl_numbers[authority] = self._t.crl_numbers.get(authority, 0) + 1
        return self._t.crl_numbers[authority]

    def current(self, authority: str) -> int:
        return self._t.crl_numbers.get(authority, 0)


class _Checkpoints:
    def __init__(self, t: _Tables) -> None:
        self._t = t

    def add(self, checkpoint: Checkpoint) -> None:
        self._t.checkpoints[checkpoint.seq] = checkpoint

    def all(self) -> list[Checkpoint]:
        return [self._t.checkpoints[seq] for seq in sorted(self._t.checkpoints)]


class _Generations:
    def __init__(self, t: _Tables) -> None:
        self._t = t

    def all(self) -> list[GenerationRow]:
        return [self._t.generations[key] for key in sorted(self._t.generations)]

    def add(self, row: GenerationRow) -> None:
        key = (row.authority, row.generation)
        if key in self._t.generations:
            raise ValueError(f"{row.authority} generation {row.generation} exists already")
        self._t.generations[key] = row

    def set_state(
        self, authority: str, generation: int, state: GenerationState, when: datetime
    ) -> None:
        key = (authority, generation)
        if key not in self._t.generations:
            raise NotFound(f"{authority} has no generation {generation}")
        self._t.generations[key] = dataclasses.replace(
            self._t.generations[key], state=state, state_changed_at=when
        )


class _Unit:
    def __init__(self, tables: _Tables) -> None:
        self._tables = tables
        self.audit = _Chain(tables)
        self.inventory = _Inventory(tables)
        self.claims = _Claims(tables)
        self.tokens = _Tokens(tables)
        self.crl_numbers = _CrlNumbers(tables)
        self.checkpoints = _Checkpoints(tables)
        self.generations = _Generations(tables)

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        before = self._tables.copy()
        try:
            yield
        except BaseException:
            for name in before.__dataclass_fields__:
                setattr(self._tables, name, getattr(before, name))
            raise
