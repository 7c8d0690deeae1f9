"""The audit log: one JSON line per decision, on disk before the answer leaves.

Records are rendered by structlog and written by a sink that appends under an
exclusive file lock (several worker processes share the file) and fsyncs before
returning. If the record cannot be written the caller gets an error, never a
certificate.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from pathlib import Path
from typing import Any

import structlog
from kubeca_client.errors import ConfigError, Unavailable


class DurableSink:
    """A structlog logger that appends each rendered line durably."""

    def __init__(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ConfigError(f"audit_log: cannot open {path} ({exc.strerror})") from None
        self.path = path
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
    def __init__(self, path: Path) -> None:
        self._sink = DurableSink(path)
        self._log = structlog.wrap_logger(
            self._sink,
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
                structlog.processors.JSONRenderer(sort_keys=True),
            ],
        )

    @property
    def path(self) -> Path:
        return self._sink.path

    def record(self, event: str, severity: str = "info", **fields: Any) -> None:
        """Append one record durably, or raise ``Unavailable``."""
        try:
            getattr(self._log, severity)(event, **fields)
        except OSError as exc:
            raise Unavailable(f"the audit log cannot be written ({exc.strerror})") from None

    def close(self) -> None:
        self._sink.close()
