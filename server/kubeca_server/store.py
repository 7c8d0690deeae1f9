"""What the service must remember across requests, restarts and worker processes.

SQLite in WAL mode by default: one file in the state directory, safe for several
worker processes (SQLite's own file locks) and several threads (one connection per
process, used under a lock). The ``Store`` protocol is what the authority sees, so a
PostgreSQL implementation can take its place for replicas behind one network HSM.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from kubeca_client.errors import ConfigError, Unavailable

SCHEMA = """
CREATE TABLE IF NOT EXISTS bootstrap_tokens (
    token_id     TEXT PRIMARY KEY,
    secret_hash  TEXT NOT NULL,
    profiles     TEXT NOT NULL,  -- JSON list
    node_name    TEXT NOT NULL,
    addresses    TEXT NOT NULL,  -- JSON list
    expires_at   REAL NOT NULL,  -- unix seconds
    created_by   TEXT NOT NULL,
    created_at   REAL NOT NULL,
    revoked_at   REAL
);
CREATE TABLE IF NOT EXISTS bootstrap_token_uses (
    token_id  TEXT NOT NULL REFERENCES bootstrap_tokens(token_id),
    profile   TEXT NOT NULL,
    used_at   REAL NOT NULL,
    PRIMARY KEY (token_id, profile)
);
"""


@dataclass(frozen=True)
class TokenRecord:
    token_id: str
    secret_hash: str
    profiles: tuple[str, ...]
    node_name: str
    addresses: tuple[str, ...]
    expires_at: datetime
    created_by: str
    created_at: datetime
    used_profiles: tuple[str, ...] = ()
    revoked: bool = False


class Store(Protocol):
    def add_token(self, token: TokenRecord) -> None: ...

    def find_token(self, token_id: str) -> TokenRecord | None: ...

    def list_tokens(self, now: datetime) -> list[TokenRecord]:
        """Tokens not yet expired, newest first."""

    def revoke_token(self, token_id: str, now: datetime) -> bool:
        """True if a token by that id existed and was not revoked already."""

    def consume_token(self, token_id: str, profile: str, now: datetime) -> bool:
        """Use the token for ``profile``, once: True for exactly one caller, ever."""

    def release_token(self, token_id: str, profile: str) -> None:
        """Undo a use whose certificate could not be issued after all."""

    def close(self) -> None: ...


def _ts(moment: datetime) -> float:
    return moment.timestamp()


def _dt(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class SQLiteStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE below),
            # so a check and the write that depends on it happen under one write lock.
            self._db = sqlite3.connect(
                path, timeout=10.0, isolation_level=None, check_same_thread=False
            )
            with self._lock:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.execute("PRAGMA foreign_keys=ON")
                self._db.executescript(SCHEMA)
            path.chmod(0o600)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"the state database {path} cannot be opened ({exc})") from None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                raise Unavailable(f"the state database is unavailable ({exc})") from None

    def _read(self, sql: str, *args: object) -> list[tuple[object, ...]]:
        with self._lock:
            try:
                return list(self._db.execute(sql, args))
            except sqlite3.OperationalError as exc:
                raise Unavailable(f"the state database is unavailable ({exc})") from None

    # --- bootstrap tokens -------------------------------------------------------------

    def add_token(self, token: TokenRecord) -> None:
        with self._write() as db:
            db.execute(
                "INSERT INTO bootstrap_tokens VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                (
                    token.token_id,
                    token.secret_hash,
                    json.dumps(list(token.profiles)),
                    token.node_name,
                    json.dumps(list(token.addresses)),
                    _ts(token.expires_at),
                    token.created_by,
                    _ts(token.created_at),
                ),
            )

    def _token_from_row(self, row: tuple[object, ...]) -> TokenRecord:
        token_id = str(row[0])
        used = self._read(
            "SELECT profile FROM bootstrap_token_uses WHERE token_id = ? ORDER BY profile",
            token_id,
        )
        return TokenRecord(
            token_id=token_id,
            secret_hash=str(row[1]),
            profiles=tuple(json.loads(str(row[2]))),
            node_name=str(row[3]),
            addresses=tuple(json.loads(str(row[4]))),
            expires_at=_dt(float(row[5])),  # type: ignore[arg-type]
            created_by=str(row[6]),
            created_at=_dt(float(row[7])),  # type: ignore[arg-type]
            used_profiles=tuple(str(u[0]) for u in used),
            revoked=row[8] is not None,
        )

    def find_token(self, token_id: str) -> TokenRecord | None:
        rows = self._read("SELECT * FROM bootstrap_tokens WHERE token_id = ?", token_id)
        return self._token_from_row(rows[0]) if rows else None

    def list_tokens(self, now: datetime) -> list[TokenRecord]:
        rows = self._read(
            "SELECT * FROM bootstrap_tokens WHERE expires_at > ? ORDER BY created_at DESC",
            _ts(now),
        )
        return [self._token_from_row(row) for row in rows]

    def revoke_token(self, token_id: str, now: datetime) -> bool:
        with self._write() as db:
            cursor = db.execute(
                "UPDATE bootstrap_tokens SET revoked_at = ? "
                "WHERE token_id = ? AND revoked_at IS NULL",
                (_ts(now), token_id),
            )
            return cursor.rowcount == 1

    def consume_token(self, token_id: str, profile: str, now: datetime) -> bool:
        with self._write() as db:
            row = db.execute(
                "SELECT profiles FROM bootstrap_tokens "
                "WHERE token_id = ? AND revoked_at IS NULL AND expires_at > ?",
                (token_id, _ts(now)),
            ).fetchone()
            if row is None or profile not in json.loads(row[0]):
                return False
            try:
                db.execute(
                    "INSERT INTO bootstrap_token_uses VALUES (?, ?, ?)",
                    (token_id, profile, _ts(now)),
                )
            except sqlite3.IntegrityError:
                return False  # used already: by an earlier request or a concurrent one
            return True

    def release_token(self, token_id: str, profile: str) -> None:
        with self._write() as db:
            db.execute(
                "DELETE FROM bootstrap_token_uses WHERE token_id = ? AND profile = ?",
                (token_id, profile),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()
