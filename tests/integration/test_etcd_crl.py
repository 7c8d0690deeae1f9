"""Real etcd enforces kubeca's CRL: a revoked client certificate is refused, a valid one is not.

One Debian etcd 3.4 member on 127.0.0.21 serves the etcd server certificate that
`kubeca pki control-plane` wrote, with client-cert auth trusting etcd-ca and
``--client-crl-file`` pointing at a DER CRL fetched with `kubeca crl` before it starts
(empty then). Two client certificates from the same profile, each with its own key, both
write and read. Then the first is revoked with `kubeca revoke`, the CRL file is fetched
again (replaced atomically, etcd still running: etcd 3.4 reads the file on every
handshake), and etcd refuses the revoked certificate, saying why in its log, while the
other still works.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

from tests.etcd_cluster import (
    KUBECA,
    EtcdCluster,
    Member,
    TLSPair,
    clean_env,
    free_ports,
    issue_layout,
)
from tests.support import RunningServer, make_token, run_server_cli, write_server_config

pytestmark = pytest.mark.integration

HOST = "127.0.0.21"
PROFILE = "etcd-healthcheck-client"
REFUSAL_LOG_TIMEOUT = 5.0


@dataclass
class CRLMember(Member):
    """A member whose client port also checks client certificates against a CRL file."""

    crl_file: Path | None = None

    def argv(self, initial_cluster: str, cluster_token: str, state: str = "new") -> list[str]:
        assert self.crl_file is not None
        argv = super().argv(initial_cluster, cluster_token, state)
        return [*argv, "--client-crl-file", str(self.crl_file)]


@dataclass(frozen=True)
class IssuedClient:
    pair: TLSPair
    serial: str  # as `kubeca issue` printed it

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.pair.cert.read_bytes())


@dataclass(frozen=True)
class Kubeca:
    server: RunningServer
    config: Path  # the CLI's client config, as the operator


@dataclass(frozen=True)
class Setup:
    cluster: EtcdCluster
    crl_file: Path
    etcd_pid: int  # the process that started with the empty CRL
    kept: IssuedClient
    revoked: IssuedClient


def _kubeca(config: Path, *args: str) -> str:
    result = subprocess.run(
        [KUBECA, "--config", str(config), *args],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, (
        f"kubeca {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


def _fetch_crl(config: Path, out: Path) -> x509.CertificateRevocationList:
    _kubeca(config, "crl", "--authority", "etcd-ca", "--out", str(out))
    return x509.load_der_x509_crl(out.read_bytes())


def _issue_client(config: Path, directory: Path, name: str) -> IssuedClient:
    pair = TLSPair(directory / f"{name}.crt", directory / f"{name}.key")
    out = _kubeca(
        config,
        "issue",
        "--profile",
        PROFILE,
        "--key-out",
        str(pair.key),
        "--cert-out",
        str(pair.cert),
    )
    found = re.search(r"serial ([0-9a-f]+),", out)
    assert found, out
    return IssuedClient(pair, found.group(1))


def _der_serial_hex(certificate: x509.Certificate) -> str:
    """The serial as etcd logs it (%x of the big-endian bytes, so an even digit count)."""
    number = certificate.serial_number
    return number.to_bytes((number.bit_length() + 7) // 8, "big").hex()


@pytest.fixture(scope="module")
def kubeca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kubeca]:
    """A server of this module's own whose operator grant may revoke."""
    base = tmp_path_factory.mktemp("etcd-crl-server")
    token = make_token(base / "hsm", label="kubeca-crl")
    config = write_server_config(base / "server", token)
    with config.open("a") as f:
        f.write("revoke = true\n")  # the operator's grant is the file's last table
    run_server_cli(config, token, "init")
    server = RunningServer(config, token).start()
    try:
        yield Kubeca(server, server.client_config(base / "client.toml"))
    finally:
        server.stop()


@pytest.fixture(scope="module")
def setup(kubeca: Kubeca, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """The running member and two client certificates; etcd stopped at the end."""
    workdir = tmp_path_factory.mktemp("etcd-crl")
    root = workdir / "layout"
    issue_layout(kubeca.config, "etcd-crl", HOST, root)
    crl_file = workdir / "etcd-ca.crl"
    assert len(_fetch_crl(kubeca.config, crl_file)) == 0
    clients = workdir / "clients"
    clients.mkdir()
    revoked = _issue_client(kubeca.config, clients, "first")
    kept = _issue_client(kubeca.config, clients, "second")
    client_port, peer_port = free_ports([HOST, HOST])
    member = CRLMember(
        name="etcd-crl",
        host=HOST,
        client_port=client_port,
        peer_port=peer_port,
        root=root,
        data_dir=workdir / "data",
        log_path=workdir / "etcd-crl.log",
        crl_file=crl_file,
    )
    cluster = EtcdCluster([member])
    try:
        cluster.start(kept.pair)
        assert member.process is not None
        yield Setup(cluster, crl_file, member.process.pid, kept, revoked)
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def revocation(kubeca: Kubeca, setup: Setup) -> Setup:
    """The first certificate revoked and the CRL file refreshed, etcd left running."""
    out = _kubeca(
        kubeca.config, "revoke", "--serial", setup.revoked.serial, "--reason", "key_compromise"
    )
    assert f"revoked {setup.revoked.serial} (etcd-ca)" in out, out
    _fetch_crl(kubeca.config, setup.crl_file)
    return setup


def _put_and_get(setup: Setup, client: IssuedClient) -> None:
    key = f"/kubeca-test/crl/{client.serial}"
    value = secrets.token_hex(8)
    put = setup.cluster.etcdctl(client.pair, "put", key, value)
    assert put.returncode == 0, f"{put.stdout}\n{put.stderr}\n{setup.cluster.logs()}"
    assert put.stdout.strip() == "OK"
    got = setup.cluster.etcdctl(client.pair, "get", key, "--print-value-only")
    assert got.returncode == 0, f"{got.stdout}\n{got.stderr}\n{setup.cluster.logs()}"
    assert got.stdout.strip() == value


def _revoked_serials(crl: x509.CertificateRevocationList) -> set[int]:
    return {entry.serial_number for entry in crl}


def test_client_certificates_are_distinct_certificates_of_one_identity(setup: Setup) -> None:
    first, second = setup.revoked.certificate, setup.kept.certificate
    assert first.subject == second.subject  # etcd can tell them apart by serial only
    assert first.public_key() != second.public_key()
    assert setup.revoked.serial != setup.kept.serial
    assert int(setup.revoked.serial, 16) == first.serial_number
    assert int(setup.kept.serial, 16) == second.serial_number


def test_both_clients_write_and_read_before_revocation(setup: Setup) -> None:
    # Runs before the revocation fixture does (file order).
    assert len(x509.load_der_x509_crl(setup.crl_file.read_bytes())) == 0
    _put_and_get(setup, setup.revoked)
    _put_and_get(setup, setup.kept)


def test_refreshed_crl_lists_only_the_revoked_certificate(revocation: Setup) -> None:
    crl = x509.load_der_x509_crl(revocation.crl_file.read_bytes())
    assert _revoked_serials(crl) == {revocation.revoked.certificate.serial_number}
    entry = crl.get_revoked_certificate_by_serial_number(
        revocation.revoked.certificate.serial_number
    )
    assert entry is not None
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value
    assert reason.reason is x509.ReasonFlags.key_compromise


def test_etcd_refuses_the_revoked_certificate(revocation: Setup) -> None:
    cluster = revocation.cluster
    member = cluster.members[0]
    # The same etcd process that started with the empty CRL: it re-read the file.
    assert member.process is not None
    assert member.process.pid == revocation.etcd_pid, "etcd was restarted"
    assert member.running(), member.log_tail()
    offset = member.log_size()
    key = "/kubeca-test/crl/after-revocation"
    put = cluster.etcdctl(revocation.revoked.pair, "put", key, "must-not-land", command_timeout=2)
    assert put.returncode != 0, f"etcd accepted a revoked client certificate: {put.stdout}"
    assert "OK" not in put.stdout
    # etcdctl only sees a dead connection; etcd's log says it was the CRL.
    reason = f"certificate serial {_der_serial_hex(revocation.revoked.certificate)} revoked"
    deadline = time.monotonic() + REFUSAL_LOG_TIMEOUT
    logged = member.log_since(offset)
    while reason not in logged and time.monotonic() < deadline:
        time.sleep(0.1)
        logged = member.log_since(offset)
    assert "rejected connection" in logged, f"{put.stderr}\n{logged}"
    assert reason in logged, f"{put.stderr}\n{logged}"
    got = cluster.etcdctl(revocation.kept.pair, "get", key, "--print-value-only")
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == ""


def test_etcd_still_accepts_the_unrevoked_certificate(revocation: Setup) -> None:
    _put_and_get(revocation, revocation.kept)


def test_server_published_crl_file_lists_the_revoked_serial(
    kubeca: Kubeca, revocation: Setup
) -> None:
    """What the server wrote itself, so etcd could read state/crl/etcd-ca.crl directly."""
    published = kubeca.server.state_dir / "crl" / "etcd-ca.crl"
    crl = x509.load_der_x509_crl(published.read_bytes())  # DER, as etcd 3.6 requires
    assert _revoked_serials(crl) == {revocation.revoked.certificate.serial_number}
    etcd_ca = x509.load_pem_x509_certificate(revocation.cluster.etcd_ca.read_bytes())
    assert crl.issuer == etcd_ca.subject
    assert crl.is_signature_valid(etcd_ca.public_key())  # type: ignore[arg-type]
    assert crl.next_update_utc is not None
    assert crl.next_update_utc > datetime.now(UTC)
