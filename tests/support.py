"""Test support: a real SoftHSM token, server configs, and the server as a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kubeca_client.client import Client, channel_credentials

REPO = Path(__file__).resolve().parent.parent
# The operator identity the tests act as; its grant allows everything, super-admin
# included, so each server's [profiles] enable_super_admin alone decides that one.
OPERATOR = "kubeca-test-admin"
BIN = Path(sys.executable).parent
SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"


@dataclass(frozen=True)
class Token:
    """A SoftHSM token in its own directory, made by softhsm/dev_token.py."""

    dir: Path
    label: str

    @property
    def conf(self) -> Path:
        return self.dir / "softhsm2.conf"

    @property
    def pin_file(self) -> Path:
        return self.dir / "hsm-pin"

    @property
    def pin(self) -> str:
        return self.pin_file.read_text().strip()

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ, SOFTHSM2_CONF=str(self.conf))


def make_token(directory: Path, label: str = "kubeca-test") -> Token:
    subprocess.run(
        [sys.executable, str(REPO / "softhsm" / "dev_token.py"), str(directory), "--label", label],
        check=True,
        capture_output=True,
    )
    return Token(directory, label)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def write_server_config(
    directory: Path,
    token: Token,
    *,
    port: int | None = None,
    key_algorithm: str = "ECDSA-P256",
    extra: str = "",
    module: str = SOFTHSM_MODULE,
    hsm_extra: str = "",
) -> Path:
    """A server config in ``directory`` (its state dir is directory/state), with an
    operator port, a bootstrap port, and a grant for the tests' operator identity."""
    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    bootstrap_port = free_port()
    authorities = "".join(
        f'\n[authorities.{name}]\nkey_algorithm = "{key_algorithm}"\n'
        for name in ("kubernetes-ca", "etcd-ca", "front-proxy-ca")
    )
    path = directory / "kubeca.toml"
    path.write_text(
        f'listen = "127.0.0.1:{port}"\n'
        f'listen_bootstrap = "127.0.0.1:{bootstrap_port}"\n'
        f'state_dir = "{directory / "state"}"\n'
        f"{extra}\n"
        "[hsm]\n"
        f'module = "{module}"\n'
        f'token_label = "{token.label}"\n'
        f'pin_file = "{token.pin_file}"\n'
        f"{hsm_extra}\n"
        f"{authorities}\n"
        f"[grants.{OPERATOR}]\n"
        'profiles = ["*", "super-admin"]\n'
        'node_names = ["*"]\n'
        'san_dns = ["*"]\n'
        'san_cidrs = ["0.0.0.0/0", "::/0"]\n'
        "bootstrap_tokens = true\n"
    )
    return path


def run_server_cli(
    config: Path, token: Token, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "kubeca-server"), "--config", str(config), *args],
        env=token.env,
        capture_output=True,
        text=True,
        check=check,
        timeout=120,
    )


def wait_until_serving(
    address: str,
    timeout: float,
    process: subprocess.Popen[bytes],
    credentials: grpc.ChannelCredentials,
) -> None:
    deadline = time.monotonic() + timeout
    with grpc.secure_channel(address, credentials) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"kubeca-server exited with {process.returncode}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise RuntimeError(f"kubeca-server at {address} did not become SERVING in {timeout}s")


@dataclass
class RunningServer:
    """``kubeca-server serve`` in a subprocess; stderr goes to a log file."""

    config: Path
    token: Token
    workers: int | None = 1  # None: serve's own default (one per core)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.config.parent / "server.log"

    def _setting(self, key: str) -> str:
        for line in self.config.read_text().splitlines():
            name, _, value = line.partition("=")
            if name.strip() == key:
                return value.strip().strip('"')
        raise AssertionError(f"config has no {key} line")

    @property
    def address(self) -> str:
        """The operator port: mutual TLS."""
        return self._setting("listen")

    @property
    def bootstrap_address(self) -> str:
        """The bootstrap port: TLS without client certificates."""
        return self._setting("listen_bootstrap")

    @property
    def credentials_dir(self) -> Path:
        return self.config.parent / "operator"

    @property
    def service_ca(self) -> Path:
        return self.state_dir / "ca" / "kubeca-service-ca.crt"

    def ensure_credentials(self) -> None:
        if not (self.credentials_dir / "client.key").exists():
            run_server_cli(
                self.config,
                self.token,
                "credentials",
                "issue",
                "--name",
                OPERATOR,
                "--out",
                str(self.credentials_dir),
            )

    def credentials(self, operator: bool = True) -> grpc.ChannelCredentials:
        """TLS trusting the service CA; with the operator's client certificate or not."""
        if not operator:
            return channel_credentials(self.service_ca.read_bytes())
        return channel_credentials(
            self.service_ca.read_bytes(),
            (self.credentials_dir / "client.crt").read_bytes(),
            (self.credentials_dir / "client.key").read_bytes(),
        )

    def channel(self) -> grpc.Channel:
        """A raw gRPC channel to the operator port, as the operator."""
        return grpc.secure_channel(self.address, self.credentials())

    def client_config(self, path: Path, timeout: float = 20, address: str | None = None) -> Path:
        """A client config file for the kubeca CLI, as the operator."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            f'address = "{address or self.address}"\n'
            f"timeout_seconds = {timeout}\n"
            f'ca_file = "{self.service_ca}"\n'
            f'cert_file = "{self.credentials_dir / "client.crt"}"\n'
            f'key_file = "{self.credentials_dir / "client.key"}"\n'
        )
        return path

    @property
    def state_dir(self) -> Path:
        return self.config.parent / "state"

    @property
    def audit_log(self) -> Path:
        return self.state_dir / "audit.log"

    def health(self) -> int:
        """The CA service's gRPC health status, asked on the bootstrap port without a
        client certificate (health is for anyone)."""
        with grpc.secure_channel(
            self.bootstrap_address, self.credentials(operator=False)
        ) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="kubeca.v1.CertificateAuthority"), timeout=5
            )
            return int(reply.status)

    def wait_health(self, status: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.health() == status:
                return
            time.sleep(0.25)
        raise AssertionError(f"health did not become {status} within {timeout}s")

    def start(self, timeout: float = 60) -> RunningServer:
        self.ensure_credentials()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    str(BIN / "kubeca-server"),
                    "--config",
                    str(self.config),
                    "serve",
                    *(["--workers", str(self.workers)] if self.workers is not None else []),
                ],
                env=self.token.env,
                stdout=log,
                stderr=log,
            )
        try:
            wait_until_serving(self.address, timeout, self.process, self.credentials())
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"{exc}\n{self.log_path.read_text()[-4000:]}") from None
        return self

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return code

    def client(
        self, timeout: float = 30, channel_options: tuple[tuple[str, int], ...] = ()
    ) -> Client:
        return Client(self.address, timeout, channel_options, credentials=self.credentials())
