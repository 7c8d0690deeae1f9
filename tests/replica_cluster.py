"""Two kubeca replicas over one network HSM and one PostgreSQL, for the replica tests.

The "network HSM" is p11-kit's remote access: ``p11-kit server`` exports one SoftHSM
token on a Unix socket (it alone has SOFTHSM2_CONF), and every replica loads
``p11-kit-client.so``, told where the socket is by its own config ([hsm] environment),
not by its process environment. PostgreSQL is a real server the tests start.

The history starts on one server with the embedded SQLite store, as a deployment
outgrowing one machine would: ``store copy`` moves it into PostgreSQL, and the two
replicas then run on that.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import subprocess
import sysconfig
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kubeca_client.client import Client, channel_credentials
from kubeca_server.store.postgres import PostgresStore

from tests.postgres_server import PASSWORD, PostgresServer
from tests.support import SOFTHSM_MODULE, RunningServer, Token, write_server_config

# Debian installs PKCS#11 modules under the architecture's multiarch directory
# (x86_64-linux-gnu, aarch64-linux-gnu, ...), which its Python knows.
MULTIARCH = sysconfig.get_config_var("MULTIARCH") or f"{platform.machine()}-linux-gnu"
P11_KIT_CLIENT = f"/usr/lib/{MULTIARCH}/pkcs11/p11-kit-client.so"


@dataclass(frozen=True)
class RemoteToken(Token):
    """The shared token as a replica sees it: through p11-kit, with no SoftHSM
    configuration in its environment (the module's own needs come from the config)."""

    @property
    def env(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}


@dataclass
class P11KitServer:
    """``p11-kit server`` exporting one SoftHSM token on a socket."""

    token: Token
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.directory / "p11.sock"

    @property
    def address(self) -> str:
        return f"unix:path={self.socket}"

    def start(self) -> P11KitServer:
        log = (self.directory / "p11-kit.log").open("ab")
        self.process = subprocess.Popen(
            [
                "p11-kit",
                "server",
                "-f",
                "--provider",
                SOFTHSM_MODULE,
                "-n",
                str(self.socket),
                f"pkcs11:token={self.token.label}",
            ],
            env=self.token.env,
            stdout=log,
            stderr=log,
        )
        deadline = time.monotonic() + 30
        while not self.socket.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"p11-kit server did not start: {self.directory}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        self.process = None


@dataclass
class Cluster:
    postgres: PostgresServer
    url: str
    hsm: P11KitServer
    replicas: list[RunningServer]
    base: Path

    def ensure_running(self) -> None:
        """Both replicas serving: a test that killed one leaves it for this to restart."""
        for replica in self.replicas:
            if replica.process is not None and replica.process.poll() is not None:
                replica.process = None
            if replica.process is None:
                replica.start()

    def client(self, order: Sequence[int], timeout: float = 20) -> Client:
        """An operator client knowing the replicas in ``order``, on connections of its own."""
        first = self.replicas[order[0]]
        return Client(
            [self.replicas[i].address for i in order],
            timeout,
            (("grpc.use_local_subchannel_pool", 1),),
            credentials=first.credentials(),
        )

    def node(self, replica: int, token: str, timeout: float = 20) -> Client:
        """A node on one replica's bootstrap port, with a bootstrap token."""
        server = self.replicas[replica]
        return Client(
            server.bootstrap_address,
            timeout,
            (("grpc.use_local_subchannel_pool", 1),),
            credentials=channel_credentials(server.service_ca.read_bytes()),
            token=token,
        )

    def store(self) -> PostgresStore:
        return PostgresStore(self.url, password=PASSWORD, read_only=True)

    def serving(self, replica: int) -> bool:
        server = self.replicas[replica]
        with grpc.secure_channel(server.address, server.credentials()) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=2
                )
            except grpc.RpcError:
                return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def kill(self, replica: int) -> None:
        process = self.replicas[replica].process
        assert process is not None
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def replica_config(
    directory: Path, token: Token, hsm: P11KitServer, store: str, password_file: Path | None
) -> Path:
    lines = [f'[store]\nurl = "{store}"']
    if password_file is not None:
        lines.append(f'password_file = "{password_file}"')
    path = write_server_config(
        directory,
        token,
        extra="\n".join(lines),
        module=P11_KIT_CLIENT,
        hsm_extra=f'environment = {{ P11_KIT_SERVER_ADDRESS = "{hsm.address}" }}',
    )
    # The operator's grant is the file's last table: it may revoke, too.
    with path.open("a") as config:
        config.write("revoke = true\n")
    return path


def short_tempdir(prefix: str) -> Path:
    # A Unix socket path must stay under 108 bytes: pytest's tmp paths can be longer.
    return Path(tempfile.mkdtemp(prefix=prefix))


def remove(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
