"""Where a gRPC server listens, and how each kind of listener proves who connects.

- ``MutualTLS``: operators; the client certificate is required and must chain to the
  service CA (grpcio can only require or refuse one, never ask for one optionally).
- ``ServerTLS``: nodes with a bootstrap token, and anyone reading CA certificates,
  CRLs and health; the server proves itself, the caller does not.
- ``UnixSocket``: a local process (kube-apiserver); the file's mode and group decide
  who may connect.
"""

from __future__ import annotations

import grp
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import grpc
from kubeca_client.errors import ConfigError


@dataclass(frozen=True)
class MutualTLS:
    address: str
    key_pem: bytes
    chain_pem: bytes
    client_ca_pem: bytes


@dataclass(frozen=True)
class ServerTLS:
    address: str
    key_pem: bytes
    chain_pem: bytes


@dataclass(frozen=True)
class UnixSocket:
    path: Path
    mode: int = 0o600
    group: str | None = None


Listener = MutualTLS | ServerTLS | UnixSocket


def bind(server: grpc.Server, listener: Listener) -> int:
    """Add ``listener`` to ``server``; the bound TCP port (0 for a socket)."""
    if isinstance(listener, UnixSocket):
        _clear_socket_path(listener.path)
        # The socket is created owner-only, so nobody can connect before its mode and
        # group are set (secure_socket, after the server started).
        previous = os.umask(0o177)
        try:
            _add(server, f"unix://{listener.path}", None)
        finally:
            os.umask(previous)
        return 0
    pair = [(listener.key_pem, listener.chain_pem)]
    if isinstance(listener, MutualTLS):
        credentials = grpc.ssl_server_credentials(
            pair, root_certificates=listener.client_ca_pem, require_client_auth=True
        )
    else:
        credentials = grpc.ssl_server_credentials(pair)
    return _add(server, listener.address, credentials)


def secure_socket(listener: UnixSocket) -> None:
    """After the server started: give the socket its mode and group."""
    try:
        if listener.group is not None:
            os.chown(listener.path, -1, grp.getgrnam(listener.group).gr_gid)
        os.chmod(listener.path, listener.mode)
    except (OSError, KeyError) as exc:
        raise ConfigError(f"cannot set the mode or group of {listener.path} ({exc})") from None


def _clear_socket_path(path: Path) -> None:
    """A socket left by an earlier run is removed; anything else at the path is not
    ours to remove, so the server refuses to start."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"{path} exists and is not a socket; refusing to replace it")
    path.unlink()


def _add(server: grpc.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    try:
        port = (
            server.add_insecure_port(address)
            if credentials is None
            else server.add_secure_port(address, credentials)
        )
    except RuntimeError:
        port = 0 if credentials is not None else -1
    if (credentials is not None and port == 0) or port < 0:
        raise ConfigError(f"cannot bind {address} (in use, or not a local address)")
    return port
