"""A three-member etcd cluster (Debian's etcd-server) on loopback, TLS everywhere.

Each member gets its own kubeadm layout from `kubeca pki control-plane`, listens on its
own loopback address (the whole of 127/8 is local on Linux) and on free ports, and runs
with client-cert auth and peer TLS with peer client-cert auth, all trusting etcd-ca only.
Everything here is bounded in time: no call waits forever.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import BIN

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"
KUBECA = str(BIN / "kubeca")
STOP_TIMEOUT = 10.0


def clean_env() -> dict[str, str]:
    """The environment without ETCD*/ETCDCTL* settings (etcd reads flags from them) or proxies."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith("ETCD") and "PROXY" not in k.upper()
    }
    env["ETCDCTL_API"] = "3"
    return env


def free_ports(hosts: Sequence[str]) -> list[int]:
    """One free TCP port per host; all sockets are held open together so none repeats."""
    with contextlib.ExitStack() as stack:
        ports = []
        for host in hosts:
            sock = stack.enter_context(socket.socket())
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def issue_layout(config: Path, node_name: str, address: str, root: Path) -> None:
    """`kubeca pki control-plane` for one member; raises with kubeca's output on failure."""
    result = subprocess.run(
        [
            KUBECA,
            "--config",
            str(config),
            "pki",
            "control-plane",
            "--node-name",
            node_name,
            "--advertise-address",
            address,
            "--dir",
            str(root),
        ],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"kubeca pki control-plane for {node_name} failed ({result.returncode}):\n"
            f"{result.stdout}\n{result.stderr}"
        )


@dataclass(frozen=True)
class TLSPair:
    """A certificate and its key, as etcdctl's --cert/--key take them."""

    cert: Path
    key: Path

    @classmethod
    def under(cls, pki: Path, base: str) -> TLSPair:
        return cls(pki / f"{base}.crt", pki / f"{base}.key")


@dataclass
class Member:
    name: str
    host: str
    client_port: int
    peer_port: int
    root: Path  # the member's kubeadm layout (root/pki/...)
    data_dir: Path
    log_path: Path
    peer_pair: TLSPair | None = None  # default: the layout's etcd/peer pair
    process: subprocess.Popen[bytes] | None = None

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def etcd_ca(self) -> Path:
        return self.pki / "etcd" / "ca.crt"

    @property
    def client_url(self) -> str:
        return f"https://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"https://{self.host}:{self.peer_port}"

    def argv(self, initial_cluster: str, cluster_token: str, state: str = "new") -> list[str]:
        etcd_pki = self.pki / "etcd"
        peer = self.peer_pair or TLSPair.under(self.pki, "etcd/peer")
        return [
            ETCD,
            "--name",
            self.name,
            "--data-dir",
            str(self.data_dir),
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
            "--listen-client-urls",
            self.client_url,
            "--advertise-client-urls",
            self.client_url,
            "--listen-peer-urls",
            self.peer_url,
            "--initial-advertise-peer-urls",
            self.peer_url,
            "--initial-cluster",
            initial_cluster,
            "--initial-cluster-state",
            state,
            "--initial-cluster-token",
            cluster_token,
            "--client-cert-auth",
            "--trusted-ca-file",
            str(etcd_pki / "ca.crt"),
            "--cert-file",
            str(etcd_pki / "server.crt"),
            "--key-file",
            str(etcd_pki / "server.key"),
            "--peer-client-cert-auth",
            "--peer-trusted-ca-file",
            str(etcd_pki / "ca.crt"),
            "--peer-cert-file",
            str(peer.cert),
            "--peer-key-file",
            str(peer.key),
        ]

    def start(self, initial_cluster: str, cluster_token: str, state: str = "new") -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv(initial_cluster, cluster_token, state),
                env=clean_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT seconds."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, offset: int) -> str:
        """What the member logged after ``offset`` (a log_size() taken earlier)."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, chars: int = 3000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return f"--- {self.name}: no log ---"
        return f"--- {self.name} ({self.log_path}) ---\n{text[-chars:]}"


def prepare_member(config: Path, workdir: Path, index: int, host: str) -> Member:
    """Member ``etcd-<index>`` on ``host``: its layout from kubeca, free ports, not started."""
    name = f"etcd-{index}"
    root = workdir / f"member-{index}"
    issue_layout(config, name, host, root)
    client_port, peer_port = free_ports([host, host])
    return Member(
        name=name,
        host=host,
        client_port=client_port,
        peer_port=peer_port,
        root=root,
        data_dir=workdir / f"data-{index}",
        log_path=workdir / f"{name}.log",
    )


@dataclass
class EtcdCluster:
    members: list[Member]
    token: str = field(default_factory=lambda: f"kubeca-test-{secrets.token_hex(8)}")

    @property
    def initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    @property
    def endpoints(self) -> str:
        return ",".join(m.client_url for m in self.members)

    @property
    def etcd_ca(self) -> Path:
        return self.members[0].etcd_ca

    def logs(self, chars: int = 3000) -> str:
        return "\n".join(m.log_tail(chars) for m in self.members)

    def etcdctl(
        self,
        client: TLSPair,
        *args: str,
        endpoints: str = "",
        command_timeout: float = 4,
        timeout: float = 20,
    ) -> subprocess.CompletedProcess[str]:
        """etcdctl against ``endpoints`` (default: every member), trusting etcd-ca and
        presenting ``client``."""
        return subprocess.run(
            [
                ETCDCTL,
                "--endpoints",
                endpoints or self.endpoints,
                "--cacert",
                str(self.etcd_ca),
                "--cert",
                str(client.cert),
                "--key",
                str(client.key),
                "--dial-timeout",
                "2s",
                "--command-timeout",
                f"{command_timeout}s",
                *args,
            ],
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self, client: TLSPair, timeout: float = 30) -> None:
        """Start every member and wait until `endpoint health --cluster` passes."""
        for member in self.members:
            member.start(self.initial_cluster, self.token)
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            dead = [m.name for m in self.members if not m.running()]
            if dead:
                raise RuntimeError(f"etcd exited early: {', '.join(dead)}\n{self.logs()}")
            result = self.etcdctl(client, "endpoint", "health", "--cluster", timeout=15)
            if result.returncode == 0:
                return
            last = result.stdout + result.stderr
            time.sleep(0.5)
        raise RuntimeError(
            f"etcd cluster not healthy within {timeout}s; last etcdctl output:\n{last}\n"
            f"{self.logs()}"
        )

    def stop(self) -> None:
        errors = []
        for member in self.members:
            try:
                member.stop()
            except Exception as exc:  # stop the others even if one will not die
                errors.append(f"{member.name}: {exc!r}")
        if errors:
            raise RuntimeError("could not stop etcd: " + "; ".join(errors))


@contextlib.contextmanager
def running_cluster(
    config: Path, workdir: Path, hosts: Sequence[str], timeout: float = 30
) -> Iterator[EtcdCluster]:
    """Layouts from kubeca, one member per host, started and healthy; stopped on exit."""
    members = [prepare_member(config, workdir, index, host) for index, host in enumerate(hosts, 1)]
    cluster = EtcdCluster(members)
    try:
        cluster.start(TLSPair.under(members[0].pki, "etcd/healthcheck-client"), timeout)
        yield cluster
    finally:
        cluster.stop()


def served_certificate(host: str, port: int, ca: Path, client: TLSPair) -> bytes:
    """The DER leaf a TLS server presents, after verifying it chains to ``ca`` and names
    ``host`` (an IP address: Python matches it against the IP SANs)."""
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(str(client.cert), str(client.key))
    with (
        socket.create_connection((host, port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der
