"""kubernetes-ca rotated with kubectl: every kubeconfig keeps working at every step.

A control-plane and a worker layout from `kubeca pki` point at a loopback TLS endpoint
standing in for kube-apiserver (it serves pki/apiserver.crt and, like
--client-ca-file, accepts client certificates from pki/ca.crt only; `reload` is its
restart). kubectl talks to it with every kubeconfig before and after each step:
begin, bundle distribution (`kubeca renew` rewrites CA files and kubeconfigs whose CA
data is not the bundle), restart, switch, renew of every leaf, restart, finish, the
new-only bundle, restart. At the end a kubeconfig of the old generation is refused.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import BIN, RunningServer, make_token, run_server_cli, write_server_config
from tests.tls_endpoint import TLSEndpoint

pytestmark = pytest.mark.integration

KUBECA = str(BIN / "kubeca")
NODE = "cp-1"
WORKER = "worker-1"
KUBECTL_TIMEOUT = 30


@dataclass(frozen=True)
class Rig:
    server: RunningServer
    config: Path
    control_plane: Path
    worker: Path
    endpoint: TLSEndpoint
    home: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.endpoint.port}"

    @property
    def pki(self) -> Path:
        return self.control_plane / "pki"

    def kubeconfigs(self) -> list[Path]:
        return [*sorted(self.control_plane.glob("*.conf")), self.worker / "kubelet.conf"]

    def restart_apiserver(self) -> None:
        self.endpoint.reload(
            self.pki / "apiserver.crt", self.pki / "apiserver.key", self.pki / "ca.crt"
        )


def _kubeca(config: Path, *args: str | Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "KUBECA_CLIENT_CONFIG"}
    result = subprocess.run(
        [KUBECA, "--config", str(config), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _kubectl(rig: Rig, kubeconfig: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env["HOME"] = str(rig.home)
    return subprocess.run(
        # --server: controller-manager and scheduler name the local endpoint (:6443).
        [
            "kubectl",
            "--kubeconfig",
            str(kubeconfig),
            "--server",
            rig.url,
            "get",
            "--raw",
            "/healthz",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=KUBECTL_TIMEOUT,
        check=False,
    )


def _every_kubeconfig_works(rig: Rig, step: str) -> None:
    configs = rig.kubeconfigs()
    assert len(configs) >= 5, configs
    for path in configs:
        result = _kubectl(rig, path)
        assert result.returncode == 0 and result.stdout.strip() == "ok", (
            f"after {step}: {path.name}: {result.stderr}"
        )


def _bundle_size(config: Path) -> int:
    out = _kubeca(config, "ca", "--authority", "kubernetes-ca", "--bundle")
    return out.count("BEGIN CERTIFICATE")


def _issuing_key(config: Path) -> str:
    out = _kubeca(config, "ca", "--authority", "kubernetes-ca", "--info")
    return out.split("issuing key ")[1].split()[0]


def _wait(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"the running server did not pick up: {what}")


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    base = tmp_path_factory.mktemp("rotate-kubectl")
    token = make_token(base / "hsm")
    server_config = write_server_config(base / "server", token)
    run_server_cli(server_config, token, "init")
    server = RunningServer(server_config, token).start()
    endpoint = TLSEndpoint()
    try:
        config = server.client_config(base / "client.toml")
        control_plane, worker = base / "control-plane", base / "worker"
        address = f"127.0.0.1:{endpoint.port}"
        _kubeca(
            config,
            *("pki", "control-plane", "--node-name", NODE, "--advertise-address", "127.0.0.1"),
            *("--control-plane-endpoint", address, "--dir", control_plane),
        )
        _kubeca(
            config,
            *("pki", "worker", "--node-name", WORKER, "--address", "127.0.0.1"),
            *("--control-plane-endpoint", address, "--dir", worker),
        )
        pki = control_plane / "pki"
        endpoint.start(pki / "apiserver.crt", pki / "apiserver.key", pki / "ca.crt")
        home = base / "home"
        home.mkdir()
        yield Rig(server, config, control_plane, worker, endpoint, home)
    finally:
        endpoint.stop()
        server.stop()


def _rotate(rig: Rig, step: str) -> str:
    result = run_server_cli(
        rig.server.config,
        rig.server.token,
        "ca",
        "rotate",
        step,
        "--authority",
        "kubernetes-ca",
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _renew(rig: Rig) -> None:
    for root in (rig.control_plane, rig.worker):
        _kubeca(rig.config, "renew", "--dir", root)


def test_kubernetes_ca_rotates_while_every_kubeconfig_keeps_working(
    rig: Rig, tmp_path: Path
) -> None:
    old_admin = tmp_path / "old-admin.conf"
    shutil.copy(rig.control_plane / "admin.conf", old_admin)
    _every_kubeconfig_works(rig, "pki")

    _rotate(rig, "begin")
    _wait(lambda: _bundle_size(rig.config) == 2, "begin")
    _every_kubeconfig_works(rig, "begin")
    _renew(rig)  # distributes the bundle: ca.crt and every kubeconfig's CA data
    assert (rig.pki / "ca.crt").read_text().count("BEGIN CERTIFICATE") == 2
    table = _kubeca(rig.config, "check-expiration", "--dir", rig.control_plane)
    bundle_lines = [
        line for line in table.splitlines() if line.startswith("ca ") and " key " in line
    ]
    assert "CA BUNDLES" in table and len(bundle_lines) == 2, table
    _every_kubeconfig_works(rig, "bundle distribution")
    rig.restart_apiserver()
    _every_kubeconfig_works(rig, "apiserver restart on the bundle")

    before = _issuing_key(rig.config)
    _rotate(rig, "switch")
    _every_kubeconfig_works(rig, "switch")
    _wait(lambda: _issuing_key(rig.config) != before, "switch")
    _renew(rig)
    _every_kubeconfig_works(rig, "renew from the new generation")
    rig.restart_apiserver()
    _every_kubeconfig_works(rig, "apiserver restart on its new certificate")

    assert "retired" in _rotate(rig, "finish")
    _wait(lambda: _bundle_size(rig.config) == 1, "finish")
    _every_kubeconfig_works(rig, "finish")
    _renew(rig)  # the new-only bundle everywhere
    assert (rig.pki / "ca.crt").read_text().count("BEGIN CERTIFICATE") == 1
    assert "CA BUNDLES" not in _kubeca(rig.config, "check-expiration", "--dir", rig.control_plane)
    _every_kubeconfig_works(rig, "new-only bundle")
    rig.restart_apiserver()
    _every_kubeconfig_works(rig, "apiserver restart on the new-only bundle")

    refused = _kubectl(rig, old_admin)
    assert refused.returncode != 0, "a kubeconfig of the retired generation still worked"
    assert "certificate" in refused.stderr, refused.stderr
