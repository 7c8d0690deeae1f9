"""Where a gRPC server listens, and how each kind of listener proves who connects.

- ``MutualTLS``: operators; the client certificate is required and must chain to the
  service CA (grpcio can only require or refuse one, never ask for one optionally).
- ``ServerTLS``: nodes with a bootstrap token, and anyone reading CA certificates,
  CRLs and health; the server proves itself, the caller does not.
- ``UnixSocket``: a local process (kube-apiserver); the file's mode and group decide
  who may connect.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
from kubeca_client.errors import ConfigError
from kubeca_client.unix_socket import clear_socket_path, owner_only, secure_socket


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
        clear_socket_path(listener.path)
        with owner_only():
            _add(server, f"unix://{listener.path}", None)
        return 0
    pair = [(listener.key_pem, listener.chain_pem)]
    if isinstance(listener, MutualTLS):
        credentials = grpc.ssl_server_credentials(
            pair, root_certificates=listener.client_ca_pem, require_client_auth=True
        )
    else:
        credentials = grpc.ssl_server_credentials(pair)
    return _add(server, listener.address, credentials)


def secure(listener: UnixSocket) -> None:
    """After the server started: give the socket its mode and group."""
    secure_socket(listener.path, listener.mode, listener.group)


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
