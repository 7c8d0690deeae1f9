"""What only the PostgreSQL store has: a schema that serve never changes, a database
that goes away and comes back, and TLS to it when the URL asks."""

from __future__ import annotations

import multiprocessing
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from kubeca_client.errors import ConfigError, Unavailable
from kubeca_server.store.postgres import PostgresStore
from kubeca_server.store.postgres_schema import SCHEMA_VERSION

from tests.postgres_server import PASSWORD, PostgresServer, remove_postgres, start_postgres

pytestmark = pytest.mark.integration


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A cluster of this test's own, free to stop and start."""
    server = start_postgres()
    yield server
    remove_postgres(server)


def test_a_database_without_the_schema_is_refused_until_migrated(postgres: PostgresServer) -> None:
    url = postgres.create_database()
    with pytest.raises(ConfigError, match=r"schema version 0.*run 'kubeca-server"):
        PostgresStore(url, password=PASSWORD)
    PostgresStore(url, password=PASSWORD, migrate=True).close()
    store = PostgresStore(url, password=PASSWORD)
    assert store.schema_version == SCHEMA_VERSION
    store.close()


def _migrate(url: str) -> None:
    PostgresStore(url, password=PASSWORD, migrate=True).close()


def test_replicas_migrating_at_once_apply_each_migration_once(postgres: PostgresServer) -> None:
    url = postgres.create_database()
    context = multiprocessing.get_context("spawn")
    children = [context.Process(target=_migrate, args=(url,)) for _ in range(4)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
    assert [child.exitcode for child in children] == [0, 0, 0, 0]
    with psycopg.connect(url, password=PASSWORD) as conn:
        rows = conn.execute("SELECT version FROM kubeca_schema").fetchall()
    assert rows == [(SCHEMA_VERSION,)]


def test_a_wrong_password_is_unavailable_and_says_nothing_of_it(postgres: PostgresServer) -> None:
    url = postgres.create_database()
    with pytest.raises(Unavailable) as caught:
        PostgresStore(url, password="not-the-password")
    assert "not-the-password" not in caught.value.message


def test_a_store_whose_database_went_away_is_unavailable_then_recovers_by_itself(
    own_postgres: PostgresServer,
) -> None:
    url = own_postgres.create_database()
    store = PostgresStore(url, password=PASSWORD, migrate=True)
    try:
        with store.unit() as unit:
            unit.audit.append({"event": "before"})
        own_postgres.stop("fast")
        with pytest.raises(Unavailable):
            store.probe()
        with pytest.raises(Unavailable), store.unit() as unit:
            unit.audit.append({"event": "lost"})
        own_postgres.start()
        store.probe()  # the same store object: no restart, no reconnect by hand
        with store.unit() as unit:
            unit.audit.append({"event": "after"})
        with store.unit(read_only=True) as unit:
            events = [r.fields()["event"] for r in unit.audit.rows(0, 10)]
        assert events == ["before", "after"]
    finally:
        store.close()


def _tls_cluster(server: PostgresServer) -> Path:
    """A self-signed server certificate for 127.0.0.1, and pg_hba that takes TLS only."""
    key, cert = server.data / "server.key", server.data / "server.crt"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    root = server.directory / "root.crt"
    root.write_bytes(cert.read_bytes())
    root.chmod(0o644)
    subprocess.run(["chown", "postgres:postgres", str(key), str(cert)], check=False)
    key.chmod(0o600)
    with (server.data / "postgresql.conf").open("a") as conf:
        conf.write("ssl = on\n")
    (server.data / "pg_hba.conf").write_text(
        "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n"
    )
    return root


def test_tls_to_the_database_when_the_url_asks_for_it(own_postgres: PostgresServer) -> None:
    url = own_postgres.create_database()
    own_postgres.stop()
    root = _tls_cluster(own_postgres)
    own_postgres.start()
    # This cluster takes TLS connections only: a URL that refuses TLS is turned away.
    with pytest.raises(Unavailable):
        PostgresStore(f"{url}?sslmode=disable", password=PASSWORD, migrate=True)
    tls_url = f"{url}?sslmode=verify-full&sslrootcert={root}"
    store = PostgresStore(tls_url, password=PASSWORD, migrate=True)
    try:
        with store.unit() as unit:
            unit.audit.append({"event": "over-tls"})
    finally:
        store.close()
    with psycopg.connect(tls_url, password=PASSWORD) as conn:
        row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
    assert row == (True,)
