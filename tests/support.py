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
from kubeca_client.client import Client

REPO = Path(__file__).resolve().parent.parent
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
) -> Path:
    """A server config in ``directory`` (its state dir is directory/state)."""
    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    authorities = "".join(
        f'\n[authorities.{name}]\nkey_algorithm = "{key_algorithm}"\n'
        for name in ("kubernetes-ca", "etcd-ca", "front-proxy-ca")
    )
    path = directory / "kubeca.toml"
    path.write_text(
        f'listen = "127.0.0.1:{port}"\n'
        f'state_dir = "{directory / "state"}"\n'
        f"{extra}\n"
        "[hsm]\n"
        f'module = "{SOFTHSM_MODULE}"\n'
        f'token_label = "{token.label}"\n'
        f'pin_file = "{token.pin_file}"\n'
        f"{authorities}"
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


def wait_until_serving(address: str, timeout: float, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
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
    workers: int = 1
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.config.parent / "server.log"

    @property
    def address(self) -> str:
        for line in self.config.read_text().splitlines():
            if line.startswith("listen"):
                return line.split("=", 1)[1].strip().strip('"')
        raise AssertionError("config has no listen line")

    @property
    def state_dir(self) -> Path:
        return self.config.parent / "state"

    @property
    def audit_log(self) -> Path:
        return self.state_dir / "audit.log"

    def start(self, timeout: float = 60) -> RunningServer:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    str(BIN / "kubeca-server"),
                    "--config",
                    str(self.config),
                    "serve",
                    "--workers",
                    str(self.workers),
                ],
                env=self.token.env,
                stdout=log,
                stderr=log,
            )
        try:
            wait_until_serving(self.address, timeout, self.process)
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

    def client(self, timeout: float = 30) -> Client:
        return Client(self.address, timeout)
