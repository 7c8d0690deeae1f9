"""The audit log: one record per decision, durable before the answer leaves.

With a store (the server always has one), each record is appended to the hash chain in
the state database, in the same transaction as the certificate it issues or the
revocation it records, and only then mirrored as a JSON line (structlog) to the log
file for shipping. Without a store (unit tests of the layers above), the fsynced JSON
line is itself the durable record. If the record cannot be written the caller gets an
error, never a certificate.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from kubeca_client.errors import ConfigError, KubecaError, Unavailable

from kubeca_server.store import CertificateRow, Store, TokenRecord


class DurableSink:
    """A structlog logger that appends each rendered line, whole, under a file lock."""

    def __init__(self, path: Path, fsync: bool) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ConfigError(f"audit_log: cannot open {path} ({exc.strerror})") from None
        self.path = path
        self._fsync = fsync
        self._lock = threading.Lock()

    def msg(self, message: str) -> None:
        data = (message + "\n").encode()
        with self._lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                end = os.lseek(self._fd, 0, os.SEEK_END)
                try:
                    view = memoryview(data)
                    while view:
                        written = os.write(self._fd, view)
                        view = view[written:]
                    if self._fsync:
                        os.fsync(self._fd)
                except OSError:
                    # Cut off a partial line (disk full mid-write), so the next record
                    # starts a line of its own and the log stays valid JSON lines.
                    with contextlib.suppress(OSError):
                        os.ftruncate(self._fd, end)
                    raise
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    info = warning = error = critical = msg

    def close(self) -> None:
        os.close(self._fd)


class AuditLog:
    def __init__(self, path: Path, store: Store | None = None) -> None:
        # With a store the database is the durable record and the file a mirror.
        self._sink = DurableSink(path, fsync=store is None)
        self._store = store
        self._log = structlog.wrap_logger(
            self._sink,
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.JSONRenderer(sort_keys=True),
            ],
        )

    @property
    def path(self) -> Path:
        return self._sink.path

    def record(
        self,
        event: str,
        severity: str = "info",
        *,
        certificate: CertificateRow | None = None,
        revoke: tuple[str, datetime, str] | None = None,
        token: TokenRecord | None = None,
        **fields: Any,
    ) -> int:
        """Append one record durably (with ``certificate`` or ``revoke`` in the same
        transaction); return its sequence number (0 without a store), or raise."""
        fields["time"] = datetime.now(UTC).isoformat()
        fields["worker"] = os.getpid()  # which process decided; workers share the chain
        seq = 0
        if self._store is not None:
            row = self._store.append_audit(
                {"event": event, "level": severity, **fields}, certificate, revoke, token
            )
            seq = row.seq
            fields.update(seq=row.seq, prev_hash=row.prev_hash, hash=row.hash)
        elif certificate is not None or revoke is not None or token is not None:
            raise AssertionError("an inventory change needs a store")
        try:
            getattr(self._log, severity)(event, **fields)
        except OSError as exc:
            if self._store is None:
                raise Unavailable(f"the audit log cannot be written ({exc.strerror})") from None
            # The chain holds the record already; the mirror catches up on the next line.
            structlog.get_logger("kubeca.audit").error("audit.mirror_failed", error=exc.strerror)
        return seq

    def refused(self, event: str, error: BaseException, **fields: Any) -> int:
        """The one way to record a refusal: the taxonomy's status and message, or, for
        anything unexpected, "internal error" (the details belong in the server log).
        The error is marked, so the service layer does not record it a second time."""
        error.kubeca_audited = True  # type: ignore[attr-defined]
        if isinstance(error, KubecaError):
            return self.record(
                event,
                "warning",
                outcome="refused",
                reason=error.message,
                status=error.status,
                **fields,
            )
        return self.record(
            event,
            "error",
            outcome="error",
            reason="internal error",
            status="INTERNAL",
            **fields,
        )

    def close(self) -> None:
        self._sink.close()
