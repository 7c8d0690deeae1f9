"""Fixtures shared by the integration tests: one real SoftHSM token and server per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubeca_client.client import Client

from tests.postgres_server import PostgresServer, remove_postgres, start_postgres
from tests.support import RunningServer, Token, make_token, run_server_cli, write_server_config


@pytest.fixture(scope="session")
def token(tmp_path_factory: pytest.TempPathFactory) -> Token:
    """A fresh SoftHSM token for the test session, in its own temp directory."""
    return make_token(tmp_path_factory.mktemp("softhsm"))


@pytest.fixture(scope="session")
def server(token: Token, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The default server: ECDSA-P256 CAs, super-admin disabled (the secure default)."""
    config = write_server_config(tmp_path_factory.mktemp("server"), token)
    run_server_cli(config, token, "init")
    running = RunningServer(config, token).start()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def client(server: RunningServer) -> Iterator[Client]:
    with server.client() as c:
        yield c


@pytest.fixture(scope="session")
def ca_files(client: Client, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each CA certificate written to a PEM file, by authority name."""
    directory = tmp_path_factory.mktemp("cas")
    files = {}
    for ca in client.ca_certificates():
        path = directory / f"{ca.authority}.crt"
        path.write_text(ca.certificate_pem)
        files[ca.authority] = path
    return files


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL 15 for the session: started here, stopped and removed at the end."""
    server = start_postgres()
    yield server
    remove_postgres(server)
