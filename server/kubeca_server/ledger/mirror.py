"""The audit log's JSON lines: a mirror of the chain, for shipping to a log system.

The chain in the store is the durable record; this file is rebuilt from it. Every
sync appends, under an exclusive file lock shared by every worker on the host, each
chain row past the last sequence number the file holds, in order. So the file never
holds a gap or a reordering, and a record whose writer died before mirroring it (kill
-9 between the commit and the write) is appended by the next sync: the next record
anyone commits, or the next start.

A writer that has just committed rows hands them to ``sync``: when they follow the
file's last line directly (the common case) they are appended as they are, without
reading the chain back; otherwise (a gap: rows of a writer that died, or of one still
waiting for the lock) the file is brought up from the chain itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kubeca_client.errors import ConfigError

from kubeca_server.ledger.chain import ChainRow
from kubeca_server.store.roles import Store

PAGE = 500
# A record's line is about a kilobyte: the first read of the tail is one page, and
# each further read doubles, up to this.
TAIL_FIRST = 4096
TAIL_CHUNK = 64 * 1024


def mirror_line(row: ChainRow) -> str:
    """The line for ``row``: its record's fields with its sequence number and links."""
    fields: dict[str, Any] = {**row.fields(), "seq": row.seq}
    fields.update(prev_hash=row.prev_hash, hash=row.hash)
    return json.dumps(fields, sort_keys=True, ensure_ascii=True)


def last_seq(path: Path) -> int:
    """The sequence number of the file's last whole line (0 for none)."""
    try:
        with path.open("rb") as handle:
            return _last_seq(handle.fileno())
    except FileNotFoundError:
        return 0


def _last_seq(fd: int) -> int:
    end = os.lseek(fd, 0, os.SEEK_END)
    position, tail, step = end, b"", TAIL_FIRST
    while position > 0:
        step = min(step, position)
        position -= step
        tail = os.pread(fd, step, position) + tail
        body = tail.rstrip(b"\n")
        start = body.rfind(b"\n")
        if start >= 0 or position == 0:
            try:
                seq = json.loads(body[start + 1 :]).get("seq", 0)
            except (ValueError, AttributeError):
                return 0
            return seq if isinstance(seq, int) else 0
        step = min(2 * step, TAIL_CHUNK)
    return 0


def _follow(after: int, rows: Sequence[ChainRow]) -> bool:
    """Whether ``rows`` are the chain's next rows after sequence number ``after``."""
    return all(row.seq == after + 1 + i for i, row in enumerate(rows))


class Mirror:
    def __init__(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ConfigError(f"audit_log: cannot open {path} ({exc.strerror})") from None
        self.path = path
        self._lock = threading.Lock()

    def sync(self, store: Store, committed: Sequence[ChainRow] = ()) -> int:
        """Append what the chain holds past the file's last line; return how many.
        ``committed``: rows the caller has just committed, in order, if it has them."""
        written = 0
        with self._lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                self._drop_partial_line()
                after = _last_seq(self._fd)
                if committed and _follow(after, committed):
                    self._append("".join(mirror_line(r) + "\n" for r in committed).encode())
                    return len(committed)
                while True:
                    with store.unit(read_only=True) as unit:
                        rows = unit.audit.rows(after, PAGE)
                    if not rows:
                        return written
                    self._append("".join(mirror_line(r) + "\n" for r in rows).encode())
                    written += len(rows)
                    after = rows[-1].seq
                    if len(rows) < PAGE:
                        # A short page is the head: asking again (a read transaction on
                        # every commit) would only confirm it.
                        return written
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _drop_partial_line(self) -> None:
        """A crash mid-write (or a full disk) can leave half a line: cut it off."""
        end = os.lseek(self._fd, 0, os.SEEK_END)
        if end == 0 or os.pread(self._fd, 1, end - 1) == b"\n":
            return
        position = end
        while position > 0:
            step = min(TAIL_CHUNK, position)
            position -= step
            chunk = os.pread(self._fd, step, position)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                os.ftruncate(self._fd, position + newline + 1)
                return
        os.ftruncate(self._fd, 0)

    def _append(self, data: bytes) -> None:
        end = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError:
            # Cut off what was half written, so the next sync starts on a line of its own.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, end)
            raise

    def close(self) -> None:
        os.close(self._fd)
