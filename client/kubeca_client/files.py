"""Atomic file writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

PRIVATE = 0o600
PUBLIC = 0o644


def atomic_write(path: Path, data: bytes, mode: int = PUBLIC, *, exclusive: bool = False) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory and a rename.

    The temp file is created with ``mode`` from the start, so a private key is never
    readable by others, not even for an instant. With ``exclusive``, an existing
    ``path`` is never replaced (FileExistsError): the file is put in place by link(),
    which fails if the name exists, even if it appeared a moment ago.
    """
    directory = path.parent
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if exclusive:
            os.link(tmp_name, path)
            os.unlink(tmp_name)
        else:
            os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
