"""The shared store: PostgreSQL (psycopg 3), for several replicas on several hosts.

Every replica, and every worker of each, opens its own connections; what must be exact
across all of them is left to the database, not to a lock in any one process:

- the audit chain has one total order: an append first takes a transaction-scoped
  advisory lock, so appends from every replica queue on the database, each one reading
  the head its predecessor committed (the ledger's group commit spreads that cost over
  a batch);
- idempotency claims, one-time token uses and CRL numbers are single statements on a
  primary key (``INSERT ... ON CONFLICT``), which PostgreSQL makes exclusive;
- "the current certificate of a request, or else its claim" is one decision: SQLite's
  write unit holds the database's one write lock from BEGIN, here a write unit takes
  the request's advisory lock in ``Inventory.current`` and ``Claims.release`` (which
  the certificate's own record calls before adding it), so a unit looking for the
  certificate and then claiming sees either the other replica's claim or its
  certificate, never neither (which would sign the request twice);
- a read-only unit is one REPEATABLE READ snapshot, so a checkpoint, a verification or
  an inventory walk sees one chain head.

A connection that fails is thrown away and the unit answers ``Unavailable``; the next
unit connects afresh, so a replica recovers by itself when the database is back.

Adding a method to a role is one small function below: SQL and a row conversion, with
``_all``/``_one``/``_run`` mapping a lost connection to ``Unavailable``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, LiteralString

import psycopg
from kubeca_client.errors import ConfigError, NotFound, Unavailable

from kubeca_server.ledger.chain import GENESIS, ChainRow, Checkpoint, chain_row
from kubeca_server.store.postgres_schema import MIGRATIONS, SCHEMA_VERSION
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

# Advisory lock keys (any two constants, the same in every replica).
_CHAIN_LOCK = 0x6B756265_63610001
_MIGRATE_LOCK = 0x6B756265_63610002
# Two-key advisory locks (a key space apart from the one-key locks above): the class of
# the per-request lock, the request fingerprint's hash the other key.
_REQUEST_LOCK_CLASS = 0x6B756265
# Connections each process keeps open; more units than this wait for one.
POOL_SIZE = 8
CONNECT_TIMEOUT_SECONDS = 5
# A unit that cannot get a connection in this time answers Unavailable.
ACQUIRE_TIMEOUT_SECONDS = 10.0

_LOST = (psycopg.OperationalError, psycopg.InterfaceError)

_CERTIFICATE_COLUMNS = (
    "serial, authority, profile, subject, sans, public_key_sha256, fingerprint_sha256, "
    "not_before, not_after, caller, request_fingerprint, certificate_pem, audit_seq, "
    "revoked_at, revocation_reason, issuer_key_id"
)
_BOOTSTRAP_COLUMNS = (
    "token_id, secret_hash, profiles, node_name, addresses, expires_at, created_by, "
    "created_at, revoked_at, max_lifetime"
)


def _unavailable(exc: BaseException) -> Unavailable:
    # The first line only: libpq's messages name the host and port, never the password.
    reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return Unavailable(f"the state database is unavailable ({reason})")


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


class PostgresStore:
    """The ``Store`` in a PostgreSQL database, shared by every replica."""

    def __init__(
        self,
        url: str,
        *,
        password: str | None = None,
        migrate: bool = False,
        read_only: bool = False,
        pool_size: int = POOL_SIZE,
    ) -> None:
        self._url = url
        self._connect_args: dict[str, Any] = {
            "connect_timeout": CONNECT_TIMEOUT_SECONDS,
            "application_name": "kubeca",
            # Timestamps come back in UTC whatever the server's default zone is.
            "options": "-c timezone=UTC",
            "autocommit": True,  # transactions are explicit (BEGIN in unit())
            # A database behind a dead network link (no RST ever comes) must turn into
            # Unavailable in seconds, not after the kernel's two-hour keepalive.
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 3,
            "keepalives_count": 3,
            "tcp_user_timeout": 20_000,  # ms unacknowledged data may wait
        }
        if password is not None:
            self._connect_args["password"] = password
        self._read_only = read_only
        self._idle: list[psycopg.Connection[Any]] = []
        self._idle_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(pool_size)
        self._closed = False
        with self._connection() as conn:
            version = self._version(conn)
            if migrate and not read_only:
                self._migrate(conn, version)
            elif version != SCHEMA_VERSION:
                raise ConfigError(
                    f"the PostgreSQL store has schema version {version}, this kubeca needs "
                    f"{SCHEMA_VERSION}: run 'kubeca-server --config FILE migrate' (or init)"
                )

    # --- connections ----------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self._url, **self._connect_args)
        except _LOST as exc:
            raise _unavailable(exc) from None

    @contextmanager
    def _connection(self, first: LiteralString = "SELECT 1") -> Iterator[psycopg.Connection[Any]]:
        """A connection of this process's pool, on which ``first`` has run; one that
        broke is closed, not returned. An idle connection the server dropped (it
        restarted) is replaced by a fresh one once, so recovery costs no request."""
        if not self._slots.acquire(timeout=ACQUIRE_TIMEOUT_SECONDS):
            raise Unavailable("the state database is busy: no connection became free")
        try:
            with self._idle_lock:
                conn = self._idle.pop() if self._idle else None
            if conn is not None:
                try:
                    conn.execute(first)
                except BaseException:
                    # Dropped while idle (the server restarted), or unusable: a fresh one.
                    conn.close()
                    conn = None
            if conn is None:
                conn = self._connect()
                try:
                    conn.execute(first)
                except BaseException as exc:
                    conn.close()
                    if isinstance(exc, _LOST):
                        raise _unavailable(exc) from None
                    raise
            try:
                yield conn
            finally:
                if conn.broken or conn.closed or self._closed:
                    conn.close()
                else:
                    with self._idle_lock:
                        self._idle.append(conn)
        finally:
            self._slots.release()

    @staticmethod
    def _version(conn: psycopg.Connection[Any]) -> int:
        try:
            exists = conn.execute("SELECT to_regclass('kubeca_schema') IS NOT NULL").fetchone()
            if not exists or not exists[0]:
                return 0
            row = conn.execute("SELECT version FROM kubeca_schema").fetchone()
        except _LOST as exc:
            raise _unavailable(exc) from None
        return int(row[0]) if row else 0

    def _migrate(self, conn: psycopg.Connection[Any], version: int) -> None:
        try:
            with conn.transaction():
                # One migrator at a time, across replicas; re-read the version under it.
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
                conn.execute("CREATE TABLE IF NOT EXISTS kubeca_schema (version integer)")
                version = self._version(conn)
                if version > SCHEMA_VERSION:
                    raise ConfigError(
                        f"the PostgreSQL store has schema version {version}, newer than this "
                        f"kubeca knows ({SCHEMA_VERSION}); run the newer kubeca"
                    )
                for number in range(version + 1, SCHEMA_VERSION + 1):
                    conn.execute(_sql(MIGRATIONS[number - 1]))
                conn.execute("DELETE FROM kubeca_schema")
                conn.execute(
                    "INSERT INTO kubeca_schema VALUES (%s)", (max(version, SCHEMA_VERSION),)
                )
        except _LOST as exc:
            raise _unavailable(exc) from None

    @property
    def schema_version(self) -> int:
        return SCHEMA_VERSION

    # --- the Store protocol -----------------------------------------------------------

    @contextmanager
    def unit(self, *, read_only: bool = False) -> Iterator[_Unit]:
        if self._read_only and not read_only:
            raise ConfigError("the PostgreSQL store was opened read-only")
        begin: LiteralString = (
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY" if read_only else "BEGIN"
        )
        with self._connection(begin) as conn:
            try:
                yield _Unit(conn, not read_only)
            except BaseException:
                if not conn.broken:
                    try:
                        conn.execute("ROLLBACK")
                    except _LOST:
                        conn.close()
                raise
            try:
                conn.execute("COMMIT")
            except _LOST as exc:
                # The outcome is unknown here: the caller must not act as if it committed.
                conn.close()
                raise _unavailable(exc) from None

    def probe(self) -> None:
        with self._connection("SELECT 1 FROM kubeca_schema"):
            pass

    def close(self) -> None:
        self._closed = True
        with self._idle_lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _sql(text: str) -> LiteralString:
    # Migrations are constants of this package, never built from input.
    return text


class _Roles:
    """Shared by the roles: the unit's connection, a lost connection as Unavailable."""

    def __init__(self, conn: psycopg.Connection[Any], writes: bool = True) -> None:
        self._conn = conn
        self._writes = writes

    def _lock_request(self, request_fingerprint: str) -> None:
        """Held to the end of the transaction (see the module's doc); only write units
        decide anything, so read-only ones never wait for it."""
        if self._writes:
            self._run(
                "SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                _REQUEST_LOCK_CLASS,
                request_fingerprint,
            )

    def _all(self, sql: LiteralString, *args: object) -> list[tuple[Any, ...]]:
        try:
            return self._conn.execute(sql, args).fetchall()
        except _LOST as exc:
            raise _unavailable(exc) from None

    def _one(self, sql: LiteralString, *args: object) -> tuple[Any, ...] | None:
        rows = self._all(sql, *args)
        return rows[0] if rows else None

    def _run(self, sql: LiteralString, *args: object) -> int:
        try:
            return self._conn.execute(sql, args).rowcount
        except _LOST as exc:
            raise _unavailable(exc) from None


class _Chain(_Roles):
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        super().__init__(conn)
        self._locked = False

    def append(self, record: Mapping[str, Any]) -> ChainRow:
        if not self._locked:
            # Held to the end of the transaction: the next appender, in any replica,
            # reads the head only after this one's rows are committed.
            self._run("SELECT pg_advisory_xact_lock(%s)", _CHAIN_LOCK)
            self._locked = True
        last = self._one("SELECT seq, hash FROM audit_chain ORDER BY seq DESC LIMIT 1")
        seq, prev_hash = (int(last[0]) + 1, str(last[1])) if last else (1, GENESIS)
        row = chain_row(seq, prev_hash, record)
        self._run(
            "INSERT INTO audit_chain VALUES (%s, %s, %s, %s)",
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
                "SELECT seq, record, prev_hash, hash FROM audit_chain WHERE seq > %s "
                "ORDER BY seq LIMIT %s",
                after,
                limit,
            )
        ]


def _chain(r: tuple[Any, ...]) -> ChainRow:
    return ChainRow(int(r[0]), str(r[1]), str(r[2]), str(r[3]))


class _Inventory(_Roles):
    def _select(self, where: LiteralString, *args: object) -> list[CertificateRow]:
        sql = "SELECT " + _CERTIFICATE_COLUMNS + " FROM certificates " + where  # noqa: S608  # fixed clauses, bound values
        return [_certificate(r) for r in self._all(sql, *args)]

    def add(self, row: CertificateRow) -> None:
        self._run(
            "INSERT INTO certificates (" + _CERTIFICATE_COLUMNS + ") VALUES "  # noqa: S608  # fixed columns
            "(%s, %s, %s, %s, %s::text[], %s, %s, %s, %s, %s, %s, %s, %s, NULL, NULL, %s)",
            row.serial,
            row.authority,
            row.profile,
            row.subject,
            list(row.sans),
            row.public_key_sha256,
            row.fingerprint_sha256,
            row.not_before,
            row.not_after,
            row.caller,
            row.request_fingerprint,
            row.certificate_pem,
            row.audit_seq,
            row.issuer_key_id,
        )

    def find(self, serial: str) -> CertificateRow | None:
        found = self._select("WHERE serial = %s", serial)
        return found[0] if found else None

    def current(self, request_fingerprint: str, now: datetime) -> CertificateRow | None:
        self._lock_request(request_fingerprint)
        found = self._select(
            "WHERE request_fingerprint = %s AND revoked_at IS NULL "
            "AND %s < not_after - (not_after - not_before) / 3 "
            "ORDER BY not_before DESC LIMIT 1",
            request_fingerprint,
            now,
        )
        return found[0] if found else None

    def page(
        self, query: InventoryQuery, after: InventoryCursor | None, limit: int
    ) -> list[CertificateRow]:
        clauses: list[LiteralString] = ["TRUE"]
        args: list[object] = []
        if query.authority:
            clauses.append("authority = %s")
            args.append(query.authority)
        if query.profile:
            clauses.append("profile = %s")
            args.append(query.profile)
        if query.expiring_before is not None:
            clauses.append("not_after <= %s")
            args.append(query.expiring_before)
        if query.revoked_only:
            clauses.append("revoked_at IS NOT NULL")
        if after is not None:
            clauses.append("(not_after, serial) > (%s, %s)")
            args.extend((after.not_after, after.serial))
        where = "WHERE " + " AND ".join(clauses) + " ORDER BY not_after, serial LIMIT %s"
        return self._select(where, *args, limit)

    def revoke(self, serial: str, when: datetime, reason: str) -> bool:
        return (
            self._run(
                "UPDATE certificates SET revoked_at = %s, revocation_reason = %s "
                "WHERE serial = %s AND revoked_at IS NULL",
                when,
                reason,
                serial,
            )
            == 1
        )

    def revoked(self, authority: str) -> list[CertificateRow]:
        return self._select(
            "WHERE authority = %s AND revoked_at IS NOT NULL ORDER BY revoked_at, serial",
            authority,
        )

    def count_unexpired(self, authority: str, issuer_key_id: str, now: datetime) -> dict[str, int]:
        rows = self._all(
            "SELECT profile, count(*) FROM certificates WHERE authority = %s AND "
            "issuer_key_id = %s AND not_after > %s AND revoked_at IS NULL GROUP BY profile",
            authority,
            issuer_key_id,
            now,
        )
        return {str(r[0]): int(r[1]) for r in rows}


def _certificate(r: tuple[Any, ...]) -> CertificateRow:
    return CertificateRow(
        serial=str(r[0]),
        authority=str(r[1]),
        profile=str(r[2]),
        subject=str(r[3]),
        sans=tuple(r[4]),
        public_key_sha256=str(r[5]),
        fingerprint_sha256=str(r[6]),
        not_before=_utc(r[7]),
        not_after=_utc(r[8]),
        caller=str(r[9]),
        request_fingerprint=str(r[10]),
        certificate_pem=str(r[11]),
        audit_seq=int(r[12]),
        revoked_at=_utc(r[13]) if r[13] is not None else None,
        revocation_reason=str(r[14]) if r[14] is not None else None,
        issuer_key_id=str(r[15]),
    )


class _Claims(_Roles):
    def claim(self, request_fingerprint: str, now: datetime, stale_before: datetime) -> bool:
        # A claim older than this is from a worker (or replica) that died mid-request.
        self._run(
            "DELETE FROM issuance_claims WHERE request_fingerprint = %s AND claimed_at < %s",
            request_fingerprint,
            stale_before,
        )
        # A concurrent insert of the same key waits for the other's transaction, then
        # inserts nothing if it committed: exactly one claimant, whichever replica.
        return (
            self._run(
                "INSERT INTO issuance_claims VALUES (%s, %s) ON CONFLICT DO NOTHING",
                request_fingerprint,
                now,
            )
            == 1
        )

    def release(self, request_fingerprint: str) -> None:
        self._lock_request(request_fingerprint)
        self._run("DELETE FROM issuance_claims WHERE request_fingerprint = %s", request_fingerprint)


class _Tokens(_Roles):
    def _record(self, row: tuple[Any, ...]) -> TokenRecord:
        token_id = str(row[0])
        used = self._all(
            "SELECT profile FROM bootstrap_token_uses WHERE token_id = %s ORDER BY profile",
            token_id,
        )
        return TokenRecord(
            token_id=token_id,
            secret_hash=str(row[1]),
            profiles=tuple(row[2]),
            node_name=str(row[3]),
            addresses=tuple(row[4]),
            expires_at=_utc(row[5]),
            created_by=str(row[6]),
            created_at=_utc(row[7]),
            used_profiles=tuple(str(u[0]) for u in used),
            revoked=row[8] is not None,
            max_lifetime=row[9],
        )

    def add(self, token: TokenRecord) -> None:
        self._run(
            "INSERT INTO bootstrap_tokens (" + _BOOTSTRAP_COLUMNS + ") VALUES "  # noqa: S608  # fixed columns
            "(%s, %s, %s::text[], %s, %s::text[], %s, %s, %s, NULL, %s)",
            token.token_id,
            token.secret_hash,
            list(token.profiles),
            token.node_name,
            list(token.addresses),
            token.expires_at,
            token.created_by,
            token.created_at,
            token.max_lifetime,
        )

    def find(self, token_id: str) -> TokenRecord | None:
        row = self._one(
            "SELECT " + _BOOTSTRAP_COLUMNS + " FROM bootstrap_tokens WHERE token_id = %s",  # noqa: S608
            token_id,
        )
        return self._record(row) if row else None

    def page(self, now: datetime, after: TokenCursor | None, limit: int) -> list[TokenRecord]:
        where: LiteralString = "expires_at > %s"
        args: list[object] = [now]
        if after is not None:
            where += " AND (expires_at, token_id) < (%s, %s)"
            args.extend((after.expires_at, after.token_id))
        sql = "SELECT " + _BOOTSTRAP_COLUMNS + " FROM bootstrap_tokens WHERE " + where  # noqa: S608  # fixed clauses, bound values
        rows = self._all(sql + " ORDER BY expires_at DESC, token_id DESC LIMIT %s", *args, limit)
        return [self._record(row) for row in rows]

    def revoke(self, token_id: str, now: datetime) -> bool:
        return (
            self._run(
                "UPDATE bootstrap_tokens SET revoked_at = %s "
                "WHERE token_id = %s AND revoked_at IS NULL",
                now,
                token_id,
            )
            == 1
        )

    def consume(self, token_id: str, profile: str, now: datetime) -> bool:
        row = self._one(
            "SELECT profiles FROM bootstrap_tokens "
            "WHERE token_id = %s AND revoked_at IS NULL AND expires_at > %s",
            token_id,
            now,
        )
        if row is None or profile not in row[0]:
            return False
        # Used already (by an earlier request or a concurrent one, in any replica).
        return (
            self._run(
                "INSERT INTO bootstrap_token_uses VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                token_id,
                profile,
                now,
            )
            == 1
        )

    def release(self, token_id: str, profile: str) -> None:
        self._run(
            "DELETE FROM bootstrap_token_uses WHERE token_id = %s AND profile = %s",
            token_id,
            profile,
        )


class _CrlNumbers(_Roles):
    def next(self, authority: str) -> int:
        # One statement under the row's lock: numbers never repeat or go back, across
        # replicas, and the caller gets the number its own statement wrote.
        row = self._one(
            "INSERT INTO crl_numbers VALUES (%s, 1) ON CONFLICT (authority) "
            "DO UPDATE SET number = crl_numbers.number + 1 RETURNING number",
            authority,
        )
        assert row is not None
        return int(row[0])

    def current(self, authority: str) -> int:
        row = self._one("SELECT number FROM crl_numbers WHERE authority = %s", authority)
        return int(row[0]) if row else 0


class _Checkpoints(_Roles):
    def add(self, checkpoint: Checkpoint) -> None:
        self._run(
            "INSERT INTO checkpoints VALUES (%s, %s, %s, %s) ON CONFLICT (seq) DO UPDATE "
            "SET head_hash = EXCLUDED.head_hash, signed_at = EXCLUDED.signed_at, "
            "signature = EXCLUDED.signature",
            checkpoint.seq,
            checkpoint.head_hash,
            checkpoint.signed_at,
            checkpoint.signature,
        )

    def all(self) -> list[Checkpoint]:
        rows = self._all(
            "SELECT seq, head_hash, signed_at, signature FROM checkpoints ORDER BY seq"
        )
        return [Checkpoint(int(r[0]), str(r[1]), _utc(r[2]), bytes(r[3])) for r in rows]


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
                created_at=_utc(r[6]),
                kind=KeyKind(str(r[7])),
                public_key_pem=str(r[8]),
                cross_certificate_pem=str(r[9]),
                state_changed_at=None if r[10] is None else _utc(r[10]),
            )
            for r in rows
        ]

    def add(self, row: GenerationRow) -> None:
        self._run(
            "INSERT INTO ca_generations (authority, generation, key_label, certificate_pem, "
            "state, provenance, created_at, kind, public_key_pem, cross_certificate_pem, "
            "state_changed_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            row.authority,
            row.generation,
            row.key_label,
            row.certificate_pem,
            row.state.value,
            row.provenance.value,
            row.created_at,
            row.kind.value,
            row.public_key_pem,
            row.cross_certificate_pem,
            row.state_changed_at,
        )

    def set_state(
        self, authority: str, generation: int, state: GenerationState, when: datetime
    ) -> None:
        changed = self._run(
            "UPDATE ca_generations SET state = %s, state_changed_at = %s "
            "WHERE authority = %s AND generation = %s",
            state.value,
            when,
            authority,
            generation,
        )
        if changed != 1:
            raise NotFound(f"{authority} has no generation {generation}")


class _Unit:
    """Every role over the unit's connection, inside its transaction."""

    def __init__(self, conn: psycopg.Connection[Any], writes: bool) -> None:
        self._conn = conn
        self.audit = _Chain(conn)
        self.inventory = _Inventory(conn, writes)
        self.claims = _Claims(conn)
        self.tokens = _Tokens(conn)
        self.crl_numbers = _CrlNumbers(conn)
        self.checkpoints = _Checkpoints(conn)
        self.generations = _Generations(conn)

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        try:
            self._conn.execute("SAVEPOINT part")
        except _LOST as exc:
            raise _unavailable(exc) from None
        try:
            yield
        except BaseException:
            try:
                self._conn.execute("ROLLBACK TO SAVEPOINT part")
                self._conn.execute("RELEASE SAVEPOINT part")
            except _LOST as exc:
                raise _unavailable(exc) from None
            raise
        try:
            self._conn.execute("RELEASE SAVEPOINT part")
        except _LOST as exc:
            raise _unavailable(exc) from None
