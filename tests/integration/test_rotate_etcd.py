"""etcd-ca rotated under load: a three-member etcd cluster (Debian's etcd-server) on
kubeca certificates keeps answering a client loop through every step.

The loop (etcdctl with all three endpoints, a put then a get, without pause) runs from
before `ca rotate begin` to after `finish`. In between: the bundle is distributed with
`kubeca renew` and a rolling restart one member at a time (etcd reads its trusted CA
files at start), `switch`, `kubeca renew` of every member's and client's certificate
and another rolling restart, `finish`, the new-only bundle distributed and a last
rolling restart. Every failed request is counted; the target is zero. At the end a
certificate of the old generation is refused by every member.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509

from tests.etcd_cluster import KUBECA, EtcdCluster, Member, TLSPair, clean_env, running_cluster
from tests.support import RunningServer, make_token, run_server_cli, write_server_config

pytestmark = pytest.mark.integration

HOSTS = ("127.0.0.31", "127.0.0.32", "127.0.0.33")
HEALTH_TIMEOUT = 20.0
UNKNOWN_AUTHORITY = "certificate signed by unknown authority"


# What etcdctl prints when the member serving a call stops in the middle of it.
_SHUTDOWN_CUTS = (
    "server closed the stream without sending trailers",
    "missing content-type field",
    "transport is closing",
)
_TLS_WORDS = ("certificate", "authority", "handshake", "tls")


def _cut_by_shutdown(stderr: str) -> bool:
    text = stderr.lower()
    return any(cut in text for cut in _SHUTDOWN_CUTS) and not any(
        word in text for word in _TLS_WORDS
    )


@dataclass
class Load:
    """A put-then-get loop against every endpoint, counting what fails."""

    cluster: EtcdCluster
    client: TLSPair
    ok: int = 0
    restart_retries: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _call(self, *args: str) -> subprocess.CompletedProcess[str]:
        """One etcdctl call, asked again once when the member that took it was shutting
        down for the rolling restart and cut the stream (etcd's own shutdown, which
        kube-apiserver's etcd client retries too). A refusal of a certificate is never
        asked again: that is what the rotation must not cause."""
        done = self.cluster.etcdctl(self.client, *args, command_timeout=8)
        if done.returncode != 0 and _cut_by_shutdown(done.stderr):
            self.restart_retries += 1
            done = self.cluster.etcdctl(self.client, *args, command_timeout=8)
        return done

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            put = self._call("put", f"k{n % 50}", str(n))
            if put.returncode != 0:
                self.failures.append(f"put {n}: {put.stderr.strip()[-300:]}")
                continue
            got = self._call("get", f"k{n % 50}", "--print-value-only")
            if got.returncode != 0 or got.stdout.strip() != str(n):
                self.failures.append(f"get {n}: {got.stdout.strip()!r} {got.stderr.strip()[-300:]}")
                continue
            self.ok += 1

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="etcd-load", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


@pytest.fixture(scope="module")
def rotating_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server of its own: rotating the session server's CAs would disturb other tests."""
    workdir = tmp_path_factory.mktemp("rotate-etcd-server")
    token = make_token(workdir / "hsm")
    config = write_server_config(workdir / "server", token)
    run_server_cli(config, token, "init")
    server = RunningServer(config, token).start()
    yield server
    server.stop()


def _server_cli(server: RunningServer, *args: str) -> str:
    result = run_server_cli(server.config, server.token, *args, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _renew(config: Path, member: Member) -> str:
    result = subprocess.run(
        [KUBECA, "--config", str(config), "renew", "--dir", str(member.root)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _healthy(cluster: EtcdCluster, member: Member, client: TLSPair) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT
    last = ""
    while time.monotonic() < deadline:
        result = cluster.etcdctl(client, "endpoint", "health", endpoints=member.client_url)
        if result.returncode == 0:
            return
        last = result.stderr
        time.sleep(0.3)
    raise AssertionError(f"{member.name} not healthy after restart: {last}\n{cluster.logs()}")


def _rolling_restart(cluster: EtcdCluster, client: TLSPair) -> None:
    for member in cluster.members:
        member.stop()
        member.start(cluster.initial_cluster, cluster.token, state="existing")
        _healthy(cluster, member, client)


def _issuing_key_id(config: Path) -> str:
    result = subprocess.run(
        [KUBECA, "--config", str(config), "ca", "--authority", "etcd-ca", "--info"],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.split("issuing key ")[1].split()[0]


def _wait_for_switch(config: Path, before: str) -> None:
    """Until the running server (reloading generations from the store) issues anew."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if _issuing_key_id(config) != before:
            return
        time.sleep(0.5)
    raise AssertionError("the running server did not pick up the switch")


def _wait_for_bundle(config: Path, count: int) -> None:
    """Until the running server publishes ``count`` etcd-ca certificates."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        result = subprocess.run(
            [KUBECA, "--config", str(config), "ca", "--authority", "etcd-ca", "--bundle"],
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        if result.stdout.count("BEGIN CERTIFICATE") == count:
            return
        time.sleep(0.5)
    raise AssertionError(f"the running server did not come to a bundle of {count}")


def _bundle_count(path: Path) -> int:
    return path.read_text().count("BEGIN CERTIFICATE")


def test_etcd_ca_rotates_under_load_without_a_failed_request(
    rotating_server: RunningServer, tmp_path: Path
) -> None:
    config = rotating_server.client_config(tmp_path / "client.toml")
    with running_cluster(config, tmp_path, HOSTS) as cluster:
        first = cluster.members[0]
        client = TLSPair.under(first.pki, "apiserver-etcd-client")
        # Kept aside: a client certificate of the old generation, for the very end.
        old = tmp_path / "old-client"
        old.mkdir()
        old_client = TLSPair(old / "client.crt", old / "client.key")
        shutil.copy(client.cert, old_client.cert)
        shutil.copy(client.key, old_client.key)
        old_key_id = _issuing_key_id(config)

        load = Load(cluster, client)
        load.start()
        try:
            # 1. begin: a new generation, trusted beside the old one.
            out = _server_cli(rotating_server, "ca", "rotate", "begin", "--authority", "etcd-ca")
            assert "generation 2 begun" in out
            _wait_for_bundle(config, 2)
            for member in cluster.members:
                _renew(config, member)  # writes the two-CA bundle as etcd/ca.crt
                assert _bundle_count(member.etcd_ca) == 2
            _rolling_restart(cluster, client)

            # 2. switch: the new generation issues; every leaf is renewed from it.
            _server_cli(rotating_server, "ca", "rotate", "switch", "--authority", "etcd-ca")
            _wait_for_switch(config, old_key_id)
            for member in cluster.members:
                renewed = _renew(config, member)
                assert "etcd/server" in renewed or "etcd-server" in renewed, renewed
            new_leaf = x509.load_pem_x509_certificate(client.cert.read_bytes())
            aki = new_leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
            assert aki.value.key_identifier is not None
            assert aki.value.key_identifier.hex() != old_key_id
            _rolling_restart(cluster, client)

            # 3. finish: nothing of the old generation is left unrenewed, so no --force.
            out = _server_cli(rotating_server, "ca", "rotate", "finish", "--authority", "etcd-ca")
            assert "generation 1 retired" in out
            _wait_for_bundle(config, 1)
            for member in cluster.members:
                _renew(config, member)  # the new-only bundle
                assert _bundle_count(member.etcd_ca) == 1
            _rolling_restart(cluster, client)
        finally:
            load.stop()

        assert load.failures == [], f"{len(load.failures)} failed of {load.ok}: {load.failures[:5]}"
        assert load.ok > 20  # the loop really ran through the rotation
        print(
            f"etcd-ca rotation under load: {load.ok} put+get pairs, 0 failed,"
            f" {load.restart_retries} asked again after a member's shutdown cut them"
        )

        # The old generation's certificate is refused by every member (etcdctl only sees
        # a dead connection; the member logs why), while the renewed one is served.
        for member in cluster.members:
            offset = member.log_size()
            refused = cluster.etcdctl(
                old_client, "get", "k1", endpoints=member.client_url, command_timeout=2
            )
            assert refused.returncode != 0, member.name
            assert _logged(member, offset, UNKNOWN_AUTHORITY), member.log_tail()
            served = cluster.etcdctl(client, "get", "k1", endpoints=member.client_url)
            assert served.returncode == 0, served.stderr


def _logged(member: Member, offset: int, text: str) -> bool:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if text in member.log_since(offset):
            return True
        time.sleep(0.2)
    return False
