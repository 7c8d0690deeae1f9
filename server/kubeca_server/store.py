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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from kubeca_client.errors import ConfigError, NotFound, Unavailable

from kubeca_server.ledger import GENESIS, ChainRow, Checkpoint, canonical, link_hash

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
    revoked_at   REAL,
    max_lifetime REAL NOT NULL DEFAULT 31536000  -- seconds: the creator's grant ceiling
);
CREATE TABLE IF NOT EXISTS audit_chain (
    seq        INTEGER PRIMARY KEY,
    record     TEXT NOT NULL,  -- canonical JSON, "seq" inside
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS certificates (
    serial               TEXT PRIMARY KEY,  -- lower-case hex
    authority            TEXT NOT NULL,
    profile              TEXT NOT NULL,
    subject              TEXT NOT NULL,
    sans                 TEXT NOT NULL,  -- JSON list
    public_key_sha256    TEXT NOT NULL,
    fingerprint_sha256   TEXT NOT NULL,
    not_before           REAL NOT NULL,
    not_after            REAL NOT NULL,
    caller               TEXT NOT NULL,
    request_fingerprint  TEXT NOT NULL,
    certificate_pem      TEXT NOT NULL,
    audit_seq            INTEGER NOT NULL REFERENCES audit_chain(seq),
    revoked_at           REAL,
    revocation_reason    TEXT
);
CREATE INDEX IF NOT EXISTS certificates_request ON certificates(request_fingerprint);
CREATE INDEX IF NOT EXISTS certificates_authority ON certificates(authority, revoked_at);
CREATE TABLE IF NOT EXISTS issuance_claims (
    request_fingerprint  TEXT PRIMARY KEY,
    claimed_at           REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    seq        INTEGER PRIMARY KEY,
    head_hash  TEXT NOT NULL,
    signed_at  REAL NOT NULL,
    signature  BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS crl_numbers (
    authority  TEXT PRIMARY KEY,
    number     INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS bootstrap_token_uses (
    token_id  TEXT NOT NULL REFERENCES bootstrap_tokens(token_id),
    profile   TEXT NOT NULL,
    used_at   REAL NOT NULL,
    PRIMARY KEY (token_id, profile)
);
"""


# How long a claim on an idempotent request holds before it counts as abandoned.
CLAIM_SECONDS = 30.0


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
    max_lifetime: timedelta = timedelta(days=365)


@dataclass(frozen=True)
class CertificateRow:
    serial: str
    authority: str
    profile: str
    subject: str
    sans: tuple[str, ...]
    public_key_sha256: str
    fingerprint_sha256: str
    not_before: datetime
    not_after: datetime
    caller: str
    request_fingerprint: str
    certificate_pem: str
    audit_seq: int = 0
    revoked_at: datetime | None = None
    revocation_reason: str | None = None


class Store(Protocol):
    def append_audit(
        self,
        record: dict[str, Any],
        certificate: CertificateRow | None = None,
        revoke: tuple[str, datetime, str] | None = None,
        token: TokenRecord | None = None,
    ) -> ChainRow:
        """Append ``record`` to the chain and, in the same transaction, the certificate
        it issues, the revocation (serial, when, reason) or the bootstrap token it
        records. Durable on return."""

    def claim_or_reuse(self, request_fingerprint: str, now: datetime) -> CertificateRow | bool:
        """For an idempotent request, atomically: the current certificate if there is
        one; else True after claiming the request (this caller signs); else False while
        another caller's claim on it is fresh (wait for its certificate)."""

    def release_claim(self, request_fingerprint: str) -> None: ...

    def chain(self) -> Iterator[ChainRow]: ...

    def head(self) -> ChainRow | None: ...

    def find_certificate(self, serial: str) -> CertificateRow | None: ...

    def list_certificates(
        self,
        authority: str = "",
        profile: str = "",
        expiring_before: datetime | None = None,
        revoked_only: bool = False,
    ) -> list[CertificateRow]: ...

    def next_crl(self, authority: str) -> tuple[int, list[CertificateRow]]:
        """A new CRL number and the revocations it must list, read in one transaction,
        so a higher number never lists fewer revocations than a lower one."""

    def crl_number(self, authority: str) -> int:
        """The newest CRL number handed out for ``authority`` (0 before the first)."""

    def add_checkpoint(self, checkpoint: Checkpoint) -> None: ...

    def checkpoints(self) -> list[Checkpoint]: ...

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
    def __init__(self, path: Path, read_only: bool = False) -> None:
        self.path = path
        self._lock = threading.Lock()
        if read_only:
            # For checking: never create, migrate or write what is being examined.
            if not path.is_file():
                raise ConfigError(f"there is no state database at {path}")
            try:
                self._db = sqlite3.connect(
                    f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
                )
                self._db.execute("SELECT count(*) FROM audit_chain").fetchone()
            except sqlite3.Error as exc:
                raise ConfigError(f"the state database {path} cannot be read ({exc})") from None
            return
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
                self._migrate()
            path.chmod(0o600)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"the state database {path} cannot be opened ({exc})") from None

    def _migrate(self) -> None:
        """Bring a database made by an earlier version up to this schema."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(bootstrap_tokens)")}
        if "max_lifetime" not in columns:
            self._db.execute(
                "ALTER TABLE bootstrap_tokens "
                "ADD COLUMN max_lifetime REAL NOT NULL DEFAULT 31536000"
            )

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

    def _read(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return list(self._db.execute(sql, args))
            except sqlite3.OperationalError as exc:
                raise Unavailable(f"the state database is unavailable ({exc})") from None

    # --- the audit chain and the inventory ----------------------------------------------

    def append_audit(
        self,
        record: dict[str, Any],
        certificate: CertificateRow | None = None,
        revoke: tuple[str, datetime, str] | None = None,
        token: TokenRecord | None = None,
    ) -> ChainRow:
        with self._write() as db:
            last = db.execute(
                "SELECT seq, hash FROM audit_chain ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            seq, prev_hash = (last[0] + 1, last[1]) if last else (1, GENESIS)
            body = canonical({**record, "seq": seq})
            row = ChainRow(seq, body, prev_hash, link_hash(prev_hash, body))
            db.execute(
                "INSERT INTO audit_chain VALUES (?, ?, ?, ?)",
                (row.seq, row.record, row.prev_hash, row.hash),
            )
            if certificate is not None:
                db.execute(
                    "DELETE FROM issuance_claims WHERE request_fingerprint = ?",
                    (certificate.request_fingerprint,),
                )
                db.execute(
                    "INSERT INTO certificates VALUES "
                    "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL)",
                    (
                        certificate.serial,
                        certificate.authority,
                        certificate.profile,
                        certificate.subject,
                        json.dumps(list(certificate.sans)),
                        certificate.public_key_sha256,
                        certificate.fingerprint_sha256,
                        _ts(certificate.not_before),
                        _ts(certificate.not_after),
                        certificate.caller,
                        certificate.request_fingerprint,
                        certificate.certificate_pem,
                        row.seq,
                    ),
                )
            if token is not None:
                _insert_token(db, token)
            if revoke is not None:
                serial, when, reason = revoke
                cursor = db.execute(
                    "UPDATE certificates SET revoked_at = ?, revocation_reason = ? "
                    "WHERE serial = ? AND revoked_at IS NULL",
                    (_ts(when), reason, serial),
                )
                if cursor.rowcount != 1:
                    raise NotFound(f"no unrevoked certificate with serial {serial[:40]}")
            return row

    def claim_or_reuse(self, request_fingerprint: str, now: datetime) -> CertificateRow | bool:
        with self._write() as db:
            row = db.execute(
                "SELECT serial FROM certificates WHERE request_fingerprint = ? "
                "AND revoked_at IS NULL AND ? < not_after - (not_after - not_before) / 3.0 "
                "ORDER BY not_before DESC LIMIT 1",
                (request_fingerprint, _ts(now)),
            ).fetchone()
            if row is None:
                # A claim older than this is from a worker that died mid-request.
                stale = _ts(now) - CLAIM_SECONDS
                db.execute(
                    "DELETE FROM issuance_claims WHERE request_fingerprint = ? AND claimed_at < ?",
                    (request_fingerprint, stale),
                )
                cursor = db.execute(
                    "INSERT OR IGNORE INTO issuance_claims VALUES (?, ?)",
                    (request_fingerprint, _ts(now)),
                )
                return cursor.rowcount == 1
        found = self.find_certificate(str(row[0]))
        return found if found is not None else False

    def release_claim(self, request_fingerprint: str) -> None:
        with self._write() as db:
            db.execute(
                "DELETE FROM issuance_claims WHERE request_fingerprint = ?", (request_fingerprint,)
            )

    def chain(self) -> Iterator[ChainRow]:
        rows = self._read("SELECT seq, record, prev_hash, hash FROM audit_chain ORDER BY seq")
        for seq, record, prev_hash, hash_ in rows:
            yield ChainRow(int(seq), str(record), str(prev_hash), str(hash_))

    def head(self) -> ChainRow | None:
        rows = self._read(
            "SELECT seq, record, prev_hash, hash FROM audit_chain ORDER BY seq DESC LIMIT 1"
        )
        if not rows:
            return None
        seq, record, prev_hash, hash_ = rows[0]
        return ChainRow(int(seq), str(record), str(prev_hash), str(hash_))

    def _certificates(self, where: str, *args: object) -> list[CertificateRow]:
        rows = self._read(f"SELECT * FROM certificates {where}", *args)  # noqa: S608  # fixed clauses, bound values
        return [_certificate_row(r) for r in rows]

    def find_certificate(self, serial: str) -> CertificateRow | None:
        found = self._certificates("WHERE serial = ?", serial)
        return found[0] if found else None

    def list_certificates(
        self,
        authority: str = "",
        profile: str = "",
        expiring_before: datetime | None = None,
        revoked_only: bool = False,
    ) -> list[CertificateRow]:
        clauses, args = ["1 = 1"], []  # type: list[str], list[object]
        if authority:
            clauses.append("authority = ?")
            args.append(authority)
        if profile:
            clauses.append("profile = ?")
            args.append(profile)
        if expiring_before is not None:
            clauses.append("not_after <= ?")
            args.append(_ts(expiring_before))
        if revoked_only:
            clauses.append("revoked_at IS NOT NULL")
        return self._certificates("WHERE " + " AND ".join(clauses) + " ORDER BY not_after", *args)

    def next_crl(self, authority: str) -> tuple[int, list[CertificateRow]]:
        with self._write() as db:
            db.execute(
                "INSERT INTO crl_numbers VALUES (?, 1) "
                "ON CONFLICT(authority) DO UPDATE SET number = number + 1",
                (authority,),
            )
            number = int(
                db.execute(
                    "SELECT number FROM crl_numbers WHERE authority = ?", (authority,)
                ).fetchone()[0]
            )
            rows = db.execute(
                "SELECT * FROM certificates WHERE authority = ? AND revoked_at IS NOT NULL "
                "ORDER BY revoked_at",
                (authority,),
            ).fetchall()
        return number, [_certificate_row(r) for r in rows]

    def crl_number(self, authority: str) -> int:
        rows = self._read("SELECT number FROM crl_numbers WHERE authority = ?", authority)
        return int(rows[0][0]) if rows else 0

    def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        with self._write() as db:
            db.execute(
                "INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?)",
                (
                    checkpoint.seq,
                    checkpoint.head_hash,
                    _ts(checkpoint.signed_at),
                    checkpoint.signature,
                ),
            )

    def checkpoints(self) -> list[Checkpoint]:
        rows = self._read(
            "SELECT seq, head_hash, signed_at, signature FROM checkpoints ORDER BY seq"
        )
        return [Checkpoint(int(r[0]), str(r[1]), _dt(float(r[2])), bytes(r[3])) for r in rows]

    # --- bootstrap tokens -------------------------------------------------------------

    def _token_from_row(self, row: tuple[Any, ...]) -> TokenRecord:
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
            expires_at=_dt(float(row[5])),
            created_by=str(row[6]),
            created_at=_dt(float(row[7])),
            used_profiles=tuple(str(u[0]) for u in used),
            revoked=row[8] is not None,
            max_lifetime=timedelta(seconds=float(row[9])),
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


def _certificate_row(r: tuple[Any, ...]) -> CertificateRow:
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
    )


def _insert_token(db: sqlite3.Connection, token: TokenRecord) -> None:
    db.execute(
        "INSERT INTO bootstrap_tokens VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, ?)",
        (
            token.token_id,
            token.secret_hash,
            json.dumps(list(token.profiles)),
            token.node_name,
            json.dumps(list(token.addresses)),
            _ts(token.expires_at),
            token.created_by,
            _ts(token.created_at),
            token.max_lifetime.total_seconds(),
        ),
    )
