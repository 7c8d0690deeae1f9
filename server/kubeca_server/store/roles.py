"""The store's role interfaces and its one unit of work.

Each role is a small interface over one kind of state; a ``UnitOfWork`` holds all of
them over one transaction, and ``Store.unit()`` commits everything done inside it
together, or nothing. So an audit record and the state change it records (a
certificate, a revocation, a token) are durable together, and any store (SQLite,
PostgreSQL, memory) is the same few methods in its own dialect. The contract suite in
tests/contract holds every implementation to the same behaviour.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, Protocol

from kubeca_server.ledger.chain import ChainRow, Checkpoint
from kubeca_server.store.records import (
    CertificateRow,
    GenerationRow,
    GenerationState,
    InventoryCursor,
    InventoryQuery,
    TokenCursor,
    TokenRecord,
)


class AuditChain(Protocol):
    def append(self, record: Mapping[str, Any]) -> ChainRow:
        """Append ``record`` after the head, with the next sequence number and link."""

    def head(self) -> ChainRow | None: ...

    def rows(self, after: int = 0, limit: int = 1000) -> list[ChainRow]:
        """Rows with seq > ``after``, in order, at most ``limit``."""


class Inventory(Protocol):
    def add(self, row: CertificateRow) -> None: ...

    def find(self, serial: str) -> CertificateRow | None: ...

    def current(self, request_fingerprint: str, now: datetime) -> CertificateRow | None:
        """The newest unrevoked certificate for the request that is still outside its
        renewal window (the last third of its life): what an idempotent repeat gets."""

    def page(
        self, query: InventoryQuery, after: InventoryCursor | None, limit: int
    ) -> list[CertificateRow]:
        """Up to ``limit`` matching rows after ``after``, in (not_after, serial) order;
        each page costs the database a bounded amount of work."""

    def revoke(self, serial: str, when: datetime, reason: str) -> bool:
        """True if an unrevoked certificate with ``serial`` existed and now is revoked."""

    def revoked(self, authority: str) -> list[CertificateRow]:
        """Every revoked certificate of ``authority``, oldest revocation first."""

    def count_unexpired(self, authority: str, issuer_key_id: str, now: datetime) -> dict[str, int]:
        """Unexpired, unrevoked certificates one CA generation signed, by profile."""


class Claims(Protocol):
    def claim(self, request_fingerprint: str, now: datetime, stale_before: datetime) -> bool:
        """Claim the right to sign for this request; False while another caller's claim
        (newer than ``stale_before``) holds it."""

    def release(self, request_fingerprint: str) -> None: ...


class Tokens(Protocol):
    def add(self, token: TokenRecord) -> None: ...

    def find(self, token_id: str) -> TokenRecord | None: ...

    def page(self, now: datetime, after: TokenCursor | None, limit: int) -> list[TokenRecord]:
        """Up to ``limit`` tokens not yet expired at ``now``, after ``after``, in
        (expires_at, token_id) descending order (the latest to expire first); each
        page costs the database a bounded amount of work (a range of an index)."""

    def revoke(self, token_id: str, now: datetime) -> bool:
        """True if a token by that id existed and was not revoked already."""

    def consume(self, token_id: str, profile: str, now: datetime) -> bool:
        """Use the token for ``profile``, once: True for exactly one caller, ever."""

    def release(self, token_id: str, profile: str) -> None:
        """Undo a use whose certificate could not be issued after all."""


class CrlNumbers(Protocol):
    def next(self, authority: str) -> int:
        """A number higher than any handed out before for ``authority``."""

    def current(self, authority: str) -> int:
        """The newest number handed out for ``authority`` (0 before the first)."""


class Checkpoints(Protocol):
    def add(self, checkpoint: Checkpoint) -> None: ...

    def all(self) -> list[Checkpoint]: ...


class Generations(Protocol):
    def all(self) -> list[GenerationRow]: ...

    def add(self, row: GenerationRow) -> None: ...

    def set_state(
        self, authority: str, generation: int, state: GenerationState, when: datetime
    ) -> None:
        """Give the generation ``state``, recording ``when`` as its state change time;
        raises ``NotFound`` when there is no such generation."""


class UnitOfWork(Protocol):
    """Every role over one transaction."""

    def savepoint(self) -> AbstractContextManager[None]:
        """A part of the unit that is undone alone if it raises, while the rest of the
        unit goes on (group commit: one entry's failed change must not sink the batch)."""

    @property
    def audit(self) -> AuditChain: ...

    @property
    def inventory(self) -> Inventory: ...

    @property
    def claims(self) -> Claims: ...

    @property
    def tokens(self) -> Tokens: ...

    @property
    def crl_numbers(self) -> CrlNumbers: ...

    @property
    def checkpoints(self) -> Checkpoints: ...

    @property
    def generations(self) -> Generations: ...


class Store(Protocol):
    """What the service remembers across requests, restarts, workers and replicas."""

    def unit(self, *, read_only: bool = False) -> AbstractContextManager[UnitOfWork]:
        """One transaction: everything done in it is durable together when the block
        ends, or rolled back if it raises. ``read_only`` units see one consistent
        snapshot and must not write. Raises ``Unavailable`` when the database cannot be
        reached."""

    def probe(self) -> None:
        """Raise ``Unavailable`` unless the database answers right now."""

    def close(self) -> None: ...
