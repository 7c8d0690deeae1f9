"""The embedded store: one SQLite file in WAL mode, in the state directory.

Safe for several worker processes (SQLite's own file locks) and several threads (one
connection per process, each unit of work under a lock). A write unit begins with
BEGIN IMMEDIATE, so a check and the write that depends on it happen under one write
lock, across processes too. Schema changes are numbered migrations recorded in
``PRAGMA user_version``; only ``init`` and ``migrate`` apply them, never ``serve``.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kubeca_client.errors import ConfigError, NotFound, Unavailable

from kubeca_server.ledger.chain import GENESIS, ChainRow, Checkpoint, chain_row
from kubeca_server.store.records import (
    CertificateRow,
    GenerationRow,
    GenerationState,
    InventoryCursor,
    InventoryQuery,
    KeyKind,
    Provenance,
    TokenCursor,
    TokenRecord,
)
from kubeca_server.store.sqlite_schema import MIGRATIONS, SCHEMA_VERSION

_CERTIFICATE_COLUMNS = (
    "serial, authority, profile, subject, sans, public_key_sha256, fingerprint_sha256, "
    "not_before, not_after, caller, request_fingerprint, certificate_pem, audit_seq, "
    "revoked_at, revocation_reason, issuer_key_id"
)
_BOOTSTRAP_COLUMNS = (
    "token_id, secret_hash, profiles, node_name, addresses, expires_at, created_by, "
    "created_at, revoked_at, max_lifetime"
)


def _ts(moment: datetime) -> float:
    return moment.timestamp()


def _dt(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _legacy_fix(db: sqlite3.Connection) -> None:
    """Databases from before migrations lack a column that migration 1 assumes."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(bootstrap_tokens)")}
    if columns and "max_lifetime" not in columns:
        db.execute(
            "ALTER TABLE bootstrap_tokens ADD COLUMN max_lifetime REAL NOT NULL DEFAULT 31536000"
        )


class SQLiteStore:
    """The ``Store`` in one SQLite file: the embedded default."""

    def __init__(self, path: Path, *, migrate: bool = False, read_only: bool = False) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._read_only = read_only
        try:
            if read_only:
                # For checking: never create, migrate or write what is being examined.
                if not path.is_file():
                    raise ConfigError(f"there is no state database at {path}")
                self._db = sqlite3.connect(
                    f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
                )
            else:
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE below).
                self._db = sqlite3.connect(
                    path, timeout=10.0, isolation_level=None, check_same_thread=False
                )
                self._lock_fd = os.open(
                    f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
                )
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.execute("PRAGMA foreign_keys=ON")
                path.chmod(0o600)
            version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            if migrate and not read_only:
                self._migrate(version)
            elif version != SCHEMA_VERSION:
                self._db.close()
                raise ConfigError(
                    f"the state database {path} has schema version {version}, this kubeca "
                    f"needs {SCHEMA_VERSION}: run 'kubeca-server --config FILE migrate' (or init)"
                )
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"the state database {path} cannot be opened ({exc})") from None

    def _migrate(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise ConfigError(
                f"the state database {self.path} has schema version {version}, newer than "
                f"this kubeca knows ({SCHEMA_VERSION}); run the newer kubeca"
            )
        for number in range(version + 1, SCHEMA_VERSION + 1):
            # executescript commits first, so each migration is its own transaction.
            if number == 1:
                _legacy_fix(self._db)
            script = MIGRATIONS[number - 1]
            self._db.executescript(
                f"BEGIN IMMEDIATE; {script}; PRAGMA user_version = {number}; COMMIT;"
            )

    @property
    def schema_version(self) -> int:
        return SCHEMA_VERSION

    @contextmanager
    def unit(self, *, read_only: bool = False) -> Iterator[_Unit]:
        if self._read_only and not read_only:
            raise ConfigError(f"the state database {self.path} was opened read-only")
        with self._lock, self._writer(not read_only):
            try:
                self._db.execute("BEGIN" if read_only else "BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise Unavailable(f"the state database is unavailable ({exc})") from None
            try:
                yield _Unit(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            try:
                self._db.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                self._db.execute("ROLLBACK")
                raise Unavailable(f"the state database is unavailable ({exc})") from None

    @contextmanager
    def _writer(self, writes: bool) -> Iterator[None]:
        """Writers of all processes queue on a file lock before BEGIN IMMEDIATE: the
        kernel wakes the next one the moment the lock is free, where SQLite's own busy
        handler would sleep and poll (milliseconds each, under load)."""
        if not writes:
            yield
            return
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def probe(self) -> None:
        with self._lock:
            try:
                self._db.execute("SELECT count(*) FROM audit_chain").fetchone()
            except sqlite3.Error as exc:
                raise Unavailable(f"the state database is unavailable ({exc})") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()
            if not self._read_only:
                os.close(self._lock_fd)


class _Roles:
    """Shared by the roles: the connection, with operational errors as Unavailable."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def _all(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        try:
            return list(self._db.execute(sql, args))
        except sqlite3.OperationalError as exc:
            raise Unavailable(f"the state database is unavailable ({exc})") from None

    def _one(self, sql: str, *args: object) -> tuple[Any, ...] | None:
        rows = self._all(sql, *args)
        return rows[0] if rows else None

    def _run(self, sql: str, *args: object) -> int:
        try:
            return self._db.execute(sql, args).rowcount
        except sqlite3.OperationalError as exc:
            raise Unavailable(f"the state database is unavailable ({exc})") from None


class _Chain(_Roles):
    def append(self, record: Mapping[str, Any]) -> ChainRow:
        last = self._one("SELECT seq, hash FROM audit_chain ORDER BY seq DESC LIMIT 1")
        seq, prev_hash = (int(last[0]) + 1, str(last[1])) if last else (1, GENESIS)
        row = chain_row(seq, prev_hash, record)
        self._run(
            "INSERT INTO audit_chain VALUES (?, ?, ?, ?)",
            row.seq,
            row.record,
            row.prev_hash,
            row.hash,
        )
        return row

    def head(self) -> ChainRow | None:
        found = self._one(
            "SELECT seq, record, prev_hash, hash FROM audit_chain ORDER BY seq DESC LIMIT 1"
        )
        return _chain(found) if found else None

    def rows(self, after: int = 0, limit: int = 1000) -> list[ChainRow]:
        return [
            _chain(r)
            for r in self._all(
                "SELECT seq, record, prev_hash, hash FROM audit_chain WHERE seq > ? "
                "ORDER BY seq LIMIT ?",
                after,
                limit,
            )
        ]


def _chain(r: tuple[Any, ...]) -> ChainRow:
    return ChainRow(int(r[0]), str(r[1]), str(r[2]), str(r[3]))


class _Inventory(_Roles):
    def _select(self, where: str, *args: object) -> list[CertificateRow]:
        sql = f"SELECT {_CERTIFICATE_COLUMNS} FROM certificates {where}"  # noqa: S608  # fixed clauses, bound values
        return [_certificate(r) for r in self._all(sql, *args)]

    def add(self, row: CertificateRow) -> None:
        self._run(
            f"INSERT INTO certificates ({_CERTIFICATE_COLUMNS}) "  # noqa: S608  # fixed columns
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?)",
            row.serial,
            row.authority,
            row.profile,
            row.subject,
            json.dumps(list(row.sans)),
            row.public_key_sha256,
            row.fingerprint_sha256,
            _ts(row.not_before),
            _ts(row.not_after),
            row.caller,
            row.request_fingerprint,
            row.certificate_pem,
            row.audit_seq,
            row.issuer_key_id,
        )

    def find(self, serial: str) -> CertificateRow | None:
        found = self._select("WHERE serial = ?", serial)
        return found[0] if found else None

    def current(self, request_fingerprint: str, now: datetime) -> CertificateRow | None:
        found = self._select(
            "WHERE request_fingerprint = ? AND revoked_at IS NULL "
            "AND ? < not_after - (not_after - not_before) / 3.0 "
            "ORDER BY not_before DESC LIMIT 1",
            request_fingerprint,
            _ts(now),
        )
        return found[0] if found else None

    def page(
        self, query: InventoryQuery, after: InventoryCursor | None, limit: int
    ) -> list[CertificateRow]:
        clauses, args = ["1 = 1"], []  # type: list[str], list[object]
        if query.authority:
            clauses.append("authority = ?")
            args.append(query.authority)
        if query.profile:
            clauses.append("profile = ?")
            args.append(query.profile)
        if query.expiring_before is not None:
            clauses.append("not_after <= ?")
            args.append(_ts(query.expiring_before))
        if query.revoked_only:
            clauses.append("revoked_at IS NOT NULL")
        if after is not None:
            clauses.append("(not_after, serial) > (?, ?)")
            args.extend((_ts(after.not_after), after.serial))
        where = "WHERE " + " AND ".join(clauses) + " ORDER BY not_after, serial LIMIT ?"
        return self._select(where, *args, limit)

    def revoke(self, serial: str, when: datetime, reason: str) -> bool:
        return (
            self._run(
                "UPDATE certificates SET revoked_at = ?, revocation_reason = ? "
                "WHERE serial = ? AND revoked_at IS NULL",
                _ts(when),
                reason,
                serial,
            )
            == 1
        )

    def revoked(self, authority: str) -> list[CertificateRow]:
        return self._select(
            "WHERE authority = ? AND revoked_at IS NOT NULL ORDER BY revoked_at", authority
        )

    def count_unexpired(self, authority: str, issuer_key_id: str, now: datetime) -> dict[str, int]:
        rows = self._all(
            "SELECT profile, count(*) FROM certificates WHERE authority = ? AND "
            "issuer_key_id = ? AND not_after > ? AND revoked_at IS NULL GROUP BY profile",
            authority,
            issuer_key_id,
            _ts(now),
        )
        return {str(r[0]): int(r[1]) for r in rows}


def _certificate(r: tuple[Any, ...]) -> CertificateRow:
    return CertificateRow(
        serial=str(r[0]),
        authority=str(r[1]),
        profile=str(r[2]),
        subject=str(r[3]),
        sans=tuple(json.loads(str(r[4]))),
        public_key_sha256=str(r[5]),
        fingerprint_sha256=str(r[6]),
        not_before=_dt(float(r[7])),
        not_after=_dt(float(r[8])),
        caller=str(r[9]),
        request_fingerprint=str(r[10]),
        certificate_pem=str(r[11]),
        audit_seq=int(r[12]),
        revoked_at=_dt(float(r[13])) if r[13] is not None else None,
        revocation_reason=str(r[14]) if r[14] is not None else None,
        issuer_key_id=str(r[15]),
    )


class _Claims(_Roles):
    def claim(self, request_fingerprint: str, now: datetime, stale_before: datetime) -> bool:
        # A claim older than this is from a worker that died mid-request.
        self._run(
            "DELETE FROM issuance_claims WHERE request_fingerprint = ? AND claimed_at < ?",
            request_fingerprint,
            _ts(stale_before),
        )
        return (
            self._run(
                "INSERT OR IGNORE INTO issuance_claims VALUES (?, ?)",
                request_fingerprint,
                _ts(now),
            )
            == 1
        )

    def release(self, request_fingerprint: str) -> None:
        self._run("DELETE FROM issuance_claims WHERE request_fingerprint = ?", request_fingerprint)


class _Tokens(_Roles):
    def _record(self, row: tuple[Any, ...]) -> TokenRecord:
        token_id = str(row[0])
        used = self._all(
            "SELECT profile FROM bootstrap_token_uses WHERE token_id = ? ORDER BY profile",
            token_id,
        )
        return TokenRecord(
            token_id=token_id,
            secret_hash=str(row[1]),
            profiles=tuple(json.loads(str(row[2]))),
            node_name=str(row[3]),
            addresses=tuple(json.loads(str(row[4]))),
            expires_at=_dt(float(row[5])),
            created_by=str(row[6]),
            created_at=_dt(float(row[7])),
            used_profiles=tuple(str(u[0]) for u in used),
            revoked=row[8] is not None,
            max_lifetime=timedelta(seconds=float(row[9])),
        )

    def add(self, token: TokenRecord) -> None:
        self._run(
            f"INSERT INTO bootstrap_tokens ({_BOOTSTRAP_COLUMNS}) "  # noqa: S608  # fixed columns
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, ?)",
            token.token_id,
            token.secret_hash,
            json.dumps(list(token.profiles)),
            token.node_name,
            json.dumps(list(token.addresses)),
            _ts(token.expires_at),
            token.created_by,
            _ts(token.created_at),
            token.max_lifetime.total_seconds(),
        )

    def find(self, token_id: str) -> TokenRecord | None:
        row = self._one(
            f"SELECT {_BOOTSTRAP_COLUMNS} FROM bootstrap_tokens WHERE token_id = ?",  # noqa: S608
            token_id,
        )
        return self._record(row) if row else None

    def page(self, now: datetime, after: TokenCursor | None, limit: int) -> list[TokenRecord]:
        where, args = "expires_at > ?", [_ts(now)]  # type: str, list[object]
        if after is not None:
            where += " AND (expires_at, token_id) < (?, ?)"
            args.extend((_ts(after.expires_at), after.token_id))
        rows = self._all(
            f"SELECT {_BOOTSTRAP_COLUMNS} FROM bootstrap_tokens WHERE {where} "  # noqa: S608  # fixed clauses, bound values
            "ORDER BY expires_at DESC, token_id DESC LIMIT ?",
            *args,
            limit,
        )
        return [self._record(row) for row in rows]

    def revoke(self, token_id: str, now: datetime) -> bool:
        return (
            self._run(
                "UPDATE bootstrap_tokens SET revoked_at = ? "
                "WHERE token_id = ? AND revoked_at IS NULL",
                _ts(now),
                token_id,
            )
            == 1
        )

    def consume(self, token_id: str, profile: str, now: datetime) -> bool:
        row = self._one(
            "SELECT profiles FROM bootstrap_tokens "
            "WHERE token_id = ? AND revoked_at IS NULL AND expires_at > ?",
            token_id,
            _ts(now),
        )
        if row is None or profile not in json.loads(row[0]):
            return False
        # Used already (by an earlier request or a concurrent one): nothing inserted.
        return (
            self._run(
                "INSERT OR IGNORE INTO bootstrap_token_uses VALUES (?, ?, ?)",
                token_id,
                profile,
                _ts(now),
            )
            == 1
        )

    def release(self, token_id: str, profile: str) -> None:
        self._run(
            "DELETE FROM bootstrap_token_uses WHERE token_id = ? AND profile = ?",
            token_id,
            profile,
        )


class _CrlNumbers(_Roles):
    def next(self, authority: str) -> int:
        self._run(
            "INSERT INTO crl_numbers VALUES (?, 1) "
            "ON CONFLICT(authority) DO UPDATE SET number = number + 1",
            authority,
        )
        return self.current(authority)

    def current(self, authority: str) -> int:
        row = self._one("SELECT number FROM crl_numbers WHERE authority = ?", authority)
        return int(row[0]) if row else 0


class _Checkpoints(_Roles):
    def add(self, checkpoint: Checkpoint) -> None:
        self._run(
            "INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?)",
            checkpoint.seq,
            checkpoint.head_hash,
            _ts(checkpoint.signed_at),
            checkpoint.signature,
        )

    def all(self) -> list[Checkpoint]:
        rows = self._all(
            "SELECT seq, head_hash, signed_at, signature FROM checkpoints ORDER BY seq"
        )
        return [Checkpoint(int(r[0]), str(r[1]), _dt(float(r[2])), bytes(r[3])) for r in rows]


class _Generations(_Roles):
    def all(self) -> list[GenerationRow]:
        rows = self._all(
            "SELECT authority, generation, key_label, certificate_pem, state, provenance, "
            "created_at, kind, public_key_pem, cross_certificate_pem, state_changed_at "
            "FROM ca_generations ORDER BY authority, generation"
        )
        return [
            GenerationRow(
                authority=str(r[0]),
                generation=int(r[1]),
                key_label=str(r[2]),
                certificate_pem=str(r[3]),
                state=GenerationState(str(r[4])),
                provenance=Provenance(str(r[5])),
                created_at=_dt(float(r[6])),
                kind=KeyKind(str(r[7])),
                public_key_pem=str(r[8]),
                cross_certificate_pem=str(r[9]),
                state_changed_at=None if r[10] is None else _dt(float(r[10])),
            )
            for r in rows
        ]

    def add(self, row: GenerationRow) -> None:
        self._run(
            "INSERT INTO ca_generations (authority, generation, key_label, certificate_pem, "
            "state, provenance, created_at, kind, public_key_pem, cross_certificate_pem, "
            "state_changed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            row.authority,
            row.generation,
            row.key_label,
            row.certificate_pem,
            row.state.value,
            row.provenance.value,
            _ts(row.created_at),
            row.kind.value,
            row.public_key_pem,
            row.cross_certificate_pem,
            None if row.state_changed_at is None else _ts(row.state_changed_at),
        )

    def set_state(
        self, authority: str, generation: int, state: GenerationState, when: datetime
    ) -> None:
        changed = self._run(
            "UPDATE ca_generations SET state = ?, state_changed_at = ? "
            "WHERE authority = ? AND generation = ?",
            state.value,
            _ts(when),
            authority,
            generation,
        )
        if changed != 1:
            raise NotFound(f"{authority} has no generation {generation}")


class _Unit:
    """Every role over the connection, inside the unit's transaction."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self.audit = _Chain(db)
        self.inventory = _Inventory(db)
        self.claims = _Claims(db)
        self.tokens = _Tokens(db)
        self.crl_numbers = _CrlNumbers(db)
        self.checkpoints = _Checkpoints(db)
        self.generations = _Generations(db)

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        self._db.execute("SAVEPOINT part")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK TO part")
            self._db.execute("RELEASE part")
            raise
        self._db.execute("RELEASE part")
