"""A unix socket's path and permissions, the same for the server's signer listener
and for ``kubeca signer-proxy``: a socket left by an earlier run is replaced, anything
else at the path is refused, and the socket is owner-only until its mode and group are
set, so nobody can connect in between."""

from __future__ import annotations

import contextlib
import grp
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from kubeca_client.errors import ConfigError


def clear_socket_path(path: Path) -> None:
    """A socket left by an earlier run is removed; anything else at the path is not
    ours to remove, so the caller refuses to start."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"{path} exists and is not a socket; refusing to replace it")
    path.unlink()


@contextlib.contextmanager
def owner_only() -> Iterator[None]:
    """While binding: the socket file is created 0600."""
    previous = os.umask(0o177)
    try:
        yield
    finally:
        os.umask(previous)


def secure_socket(path: Path, mode: int, group: str | None) -> None:
    """After binding: give the socket its mode and group."""
    try:
        if group is not None:
            os.chown(path, -1, grp.getgrnam(group).gr_gid)
        os.chmod(path, mode)
    except (OSError, KeyError) as exc:
        raise ConfigError(f"cannot set the mode or group of {path} ({exc})") from None
