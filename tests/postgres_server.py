"""A real PostgreSQL 15 (Debian's binaries) for the tests: initdb in a temporary
directory, a free port, stopped and removed at the end.

initdb and postgres refuse to run as root, so when the tests are root the cluster runs
as the ``postgres`` system user (Debian's package makes it) through ``runuser``.
Connections are TCP with a password (scram-sha-256), as replicas on other hosts would
connect; the superuser connects over the cluster's own Unix socket directory.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from tests.support import free_port

PASSWORD = "kubeca-test-password"  # a throwaway cluster's
USER = "kubeca"


def pg_bindir() -> Path:
    for candidate in (Path("/usr/lib/postgresql/15/bin"),):
        if (candidate / "initdb").exists():
            return candidate
    found = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True)
    return Path(found.stdout.strip())


@dataclass
class PostgresServer:
    directory: Path
    port: int = field(default_factory=free_port)
    _databases: int = 0

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def log(self) -> Path:
        return self.directory / "postgres.log"

    def _as_owner(self, *argv: str) -> list[str]:
        if os.geteuid() != 0:
            return list(argv)
        return ["runuser", "-u", "postgres", "--", *argv]

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self._as_owner(*argv), capture_output=True, text=True, check=True, timeout=120
        )

    def initdb(self) -> PostgresServer:
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.directory, owner.pw_uid, owner.pw_gid)
        self.directory.chmod(0o700)
        self._run(
            str(pg_bindir() / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--no-instructions",
        )
        return self

    def start(self) -> PostgresServer:
        options = (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
            "-c max_connections=200"
        )
        self._run(
            str(pg_bindir() / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )
        return self

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(
            self._as_owner(
                str(pg_bindir() / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"
            ),
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host=str(self.directory),
            port=self.port,
            user="postgres",
            dbname="postgres",
            autocommit=True,
        )

    def create_role(self) -> None:
        with self.admin() as conn:
            conn.execute(f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'")

    def create_database(self, name: str | None = None) -> str:
        """A new empty database owned by the kubeca role; its URL (no password in it)."""
        if name is None:
            self._databases += 1
            name = f"kubeca_{self._databases}"
        with self.admin() as conn:
            conn.execute(f"CREATE DATABASE {name} OWNER {USER}")
        return self.url(name)

    def url(self, database: str) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.admin():
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def start_postgres() -> PostgresServer:
    # Not under pytest's tmp_path: that is private to root, and the cluster's owner
    # (postgres) must reach its directory.
    directory = Path(tempfile.mkdtemp(prefix="kubeca-pg-"))
    server = PostgresServer(directory).initdb().start()
    server.create_role()
    return server


def remove_postgres(server: PostgresServer) -> None:
    server.stop("immediate")
    shutil.rmtree(server.directory, ignore_errors=True)
