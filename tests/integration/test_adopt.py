"""Adopting a kubeadm cluster's PKI into SoftHSM, with a real etcd cluster.

A PKI laid out as kubeadm makes it (tests/kubeadm_pki.py: same extensions and names) is
imported with `kubeca-server ca import --from`; the token then holds each key sensitive,
non-extractable and saying it was imported; a three-member etcd cluster started on the
original kubeadm certificates keeps working when kubeca-issued leaves are mixed in; and
each kind of bad input is refused with nothing written.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from tests.etcd_cluster import KUBECA, EtcdCluster, Member, TLSPair, clean_env, free_ports
from tests.kubeadm_pki import KubeadmCA, write_etcd_member, write_kubeadm_pki
from tests.support import (
    SOFTHSM_MODULE,
    RunningServer,
    Token,
    make_token,
    run_server_cli,
    write_server_config,
)

pytestmark = pytest.mark.integration

HOSTS = ("127.0.0.21", "127.0.0.22", "127.0.0.23")
LABELS = (
    "kubeca/kubernetes-ca",
    "kubeca/etcd-ca",
    "kubeca/front-proxy-ca",
    "kubeca/service-account",
)
KEY_FILES = ("ca.key", "etcd/ca.key", "front-proxy-ca.key", "sa.key")

FACTS = """
import dataclasses, json, os, sys
from kubeca_server.keys.pkcs11_backend import Pkcs11Backend
module, label = sys.argv[1:3]
backend = Pkcs11Backend(module, label, os.environ["TEST_PIN"])
print(json.dumps({l: dataclasses.asdict(backend.key_facts(l)) for l in sys.argv[3:]}))
"""


@dataclass
class Adopted:
    workdir: Path
    pki: Path
    cas: dict[str, KubeadmCA]
    token: Token
    config: Path
    imported: subprocess.CompletedProcess[str]
    server: RunningServer
    client_config: Path


@pytest.fixture(scope="module")
def adopted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Adopted]:
    workdir = tmp_path_factory.mktemp("adopt")
    pki = workdir / "kubeadm" / "pki"
    cas = write_kubeadm_pki(pki)
    token = make_token(workdir / "hsm")
    config = write_server_config(workdir / "server", token)
    with config.open("a") as f:
        f.write("revoke = true\n")  # the operator's grant is the file's last table
    imported = run_server_cli(config, token, "ca", "import", "--from", str(pki), check=False)
    assert imported.returncode == 0, imported.stderr
    run_server_cli(config, token, "init")
    server = RunningServer(config, token).start()
    try:
        yield Adopted(
            workdir,
            pki,
            cas,
            token,
            config,
            imported,
            server,
            server.client_config(workdir / "client.toml"),
        )
    finally:
        server.stop()


def _kubeca(adopted: Adopted, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KUBECA, "--config", str(adopted.client_config), *args],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_import_says_which_files_to_destroy_sa_key_included(adopted: Adopted) -> None:
    out = adopted.imported.stdout
    for name in KEY_FILES:
        assert str(adopted.pki / name) in out
    assert "shred -u" in out
    assert "backups and snapshots keep copies" in out
    # kubeca holds the service-account key: kubeadm's is imported, not skipped.
    assert "sa.key skipped" not in out


def test_the_signer_publishes_and_signs_with_the_imported_sa_key(adopted: Adopted) -> None:
    from cryptography.hazmat.primitives import serialization
    from kubeca_client.client import Client
    from kubeca_client.config import load_client_config

    pub = serialization.load_pem_public_key((adopted.pki / "sa.pub").read_bytes())
    der = pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with Client.from_config(load_client_config(adopted.client_config)) as client:
        published = client.service_account_keys()
    # Tokens kube-apiserver signed with the file key before still verify.
    assert [k.public_der for k in published] == [der]


def test_imported_keys_are_sensitive_non_extractable_and_say_they_were_imported(
    adopted: Adopted,
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", FACTS, SOFTHSM_MODULE, adopted.token.label, *LABELS],
        env=dict(adopted.token.env, TEST_PIN=adopted.token.pin),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    for label in LABELS:
        assert facts[label] == {
            "sensitive": True,
            "extractable": False,
            "always_sensitive": False,  # the truth: it existed outside the token
            "never_extractable": False,
            "local": False,
            "sign_only": True,
        }, label


def test_no_key_file_is_copied_into_kubeca_state(adopted: Adopted) -> None:
    originals = [(adopted.pki / name).read_bytes() for name in KEY_FILES]
    for path in (adopted.config.parent).rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(original.strip() in data for original in originals), path


def test_status_and_kubeca_ca_show_the_provenance(adopted: Adopted) -> None:
    status = run_server_cli(adopted.config, adopted.token, "ca", "status")
    assert "etcd-ca (steady):\n  generation 1: issuing, key imported" in status.stdout
    assert "kubeca-service-ca (steady):\n  generation 1: issuing, key generated" in status.stdout
    info = _kubeca(adopted, "ca", "--authority", "etcd-ca", "--info")
    assert info.returncode == 0, info.stderr
    assert "imported (existed outside the HSM once: rotate it)" in info.stdout


def _member(adopted: Adopted, index: int, host: str) -> Member:
    name = f"etcd-{index}"
    root = adopted.workdir / f"member-{index}"
    write_etcd_member(root / "pki", adopted.cas["etcd-ca"], name, host)
    client_port, peer_port = free_ports([host, host])
    return Member(
        name,
        host,
        client_port,
        peer_port,
        root,
        adopted.workdir / f"data-{index}",
        adopted.workdir / f"{name}.log",
    )


def _issue(adopted: Adopted, profile: str, out: Path, *params: str) -> TLSPair:
    out.mkdir(parents=True, exist_ok=True)
    pair = TLSPair(out / f"{profile}.crt", out / f"{profile}.key")
    for path in (pair.cert, pair.key):
        path.unlink(missing_ok=True)
    args = [a for p in params for a in ("--param", p)]
    result = _kubeca(
        adopted,
        "issue",
        "--profile",
        profile,
        *args,
        "--key-out",
        str(pair.key),
        "--cert-out",
        str(pair.cert),
    )
    assert result.returncode == 0, result.stderr
    return pair


def test_etcd_on_the_original_certificates_keeps_working_with_kubeca_leaves(
    adopted: Adopted,
) -> None:
    members = [_member(adopted, i, host) for i, host in enumerate(HOSTS, 1)]
    cluster = EtcdCluster(members)
    original = TLSPair.under(members[0].pki, "etcd/healthcheck-client")
    try:
        cluster.start(original)
        put = cluster.etcdctl(original, "put", "adopted", "before")
        assert put.returncode == 0, put.stderr
        # A kubeca leaf, signed by the imported key, is accepted by members that trust
        # only the cluster's own etcd/ca.crt.
        mine = _issue(adopted, "apiserver-etcd-client", adopted.workdir / "leaves")
        got = cluster.etcdctl(mine, "get", "adopted", "--print-value-only")
        assert got.returncode == 0 and got.stdout.strip() == "before", got.stderr
        # One member restarts on a kubeca-issued server certificate; the cluster, the
        # original client and the new one all keep working.
        first = members[0]
        server = _issue(
            adopted,
            "etcd-server",
            adopted.workdir / "leaves",
            f"node_name={first.name}",
            f"advertise_address={first.host}",
        )
        (first.pki / "etcd" / "server.crt").write_bytes(server.cert.read_bytes())
        (first.pki / "etcd" / "server.key").write_bytes(server.key.read_bytes())
        first.stop()
        first.start(cluster.initial_cluster, cluster.token, state="existing")
        health = cluster.etcdctl(mine, "endpoint", "health", "--cluster", timeout=30)
        for _ in range(20):
            if health.returncode == 0:
                break
            health = cluster.etcdctl(mine, "endpoint", "health", "--cluster", timeout=30)
        assert health.returncode == 0, health.stderr + cluster.logs()
        for client in (original, mine):
            got = cluster.etcdctl(
                client, "get", "adopted", "--print-value-only", endpoints=first.client_url
            )
            assert got.returncode == 0 and got.stdout.strip() == "before", got.stderr
    finally:
        cluster.stop()


# --- bad input: refused, nothing written ----------------------------------------------


@dataclass
class Fresh:
    token: Token
    config: Path
    pki: Path

    def run(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                str(Path(sys.executable).parent / "kubeca-server"),
                "--config",
                str(self.config),
                *args,
            ],
            env=dict(self.token.env, **(env or {})),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def nothing_written(self) -> None:
        status = self.run("ca", "status")
        assert status.returncode == 0, status.stderr
        assert status.stdout == ""
        # The refusal itself is audited, like a refused request.
        log = self.config.parent / "state" / "audit.log"
        events = [json.loads(line)["event"] for line in log.read_text().splitlines()]
        assert "ca.import.refused" in events and "ca.imported" not in events, events


@pytest.fixture
def fresh(tmp_path: Path) -> Fresh:
    token = make_token(tmp_path / "hsm")
    pki = tmp_path / "pki"
    write_kubeadm_pki(pki)
    return Fresh(token, write_server_config(tmp_path / "server", token), pki)


def _refused(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_key_that_does_not_match_its_certificate_is_refused(fresh: Fresh) -> None:
    (fresh.pki / "etcd" / "ca.key").write_bytes((fresh.pki / "ca.key").read_bytes())
    _refused(fresh.run("ca", "import", "--from", str(fresh.pki)), "does not belong to")
    fresh.nothing_written()


def test_a_certificate_that_is_not_a_ca_is_refused(fresh: Fresh, tmp_path: Path) -> None:
    leaf = tmp_path / "leaf"
    write_etcd_member(leaf, write_kubeadm_pki(tmp_path / "other")["etcd-ca"], "n", "127.0.0.1")
    result = fresh.run(
        "ca",
        "import",
        "--authority",
        "etcd-ca",
        "--cert",
        str(leaf / "etcd/server.crt"),
        "--key",
        str(leaf / "etcd/server.key"),
    )
    _refused(result, "not a CA certificate")
    fresh.nothing_written()


def test_a_directory_with_files_missing_is_refused(fresh: Fresh) -> None:
    (fresh.pki / "front-proxy-ca.crt").unlink()
    _refused(fresh.run("ca", "import", "--from", str(fresh.pki)), "missing: front-proxy-ca.crt")
    fresh.nothing_written()


def test_an_encrypted_key_needs_its_passphrase_from_a_file_or_the_environment(
    fresh: Fresh, tmp_path: Path
) -> None:
    encrypted = tmp_path / "encrypted"
    write_kubeadm_pki(encrypted, passphrase=b"s3cret")
    _refused(fresh.run("ca", "import", "--from", str(encrypted)), "the key is encrypted")
    fresh.nothing_written()
    done = fresh.run(
        "ca",
        "import",
        "--from",
        str(encrypted),
        "--passphrase-env",
        "PKI_PASS",
        env={"PKI_PASS": "s3cret"},
    )
    assert done.returncode == 0, done.stderr
    assert "s3cret" not in done.stdout + done.stderr


def test_a_second_import_is_refused_and_changes_nothing(adopted: Adopted) -> None:
    before = run_server_cli(adopted.config, adopted.token, "ca", "status").stdout
    again = run_server_cli(
        adopted.config, adopted.token, "ca", "import", "--from", str(adopted.pki), check=False
    )
    _refused(again, "never replaced")
    assert run_server_cli(adopted.config, adopted.token, "ca", "status").stdout == before


# --- CRLs signed by an imported kubeadm CA (no cRLSign in its key usage) ----------------


@dataclass
class _CRLMember(Member):
    crl_file: Path | None = None

    def argv(self, initial_cluster: str, cluster_token: str, state: str = "new") -> list[str]:
        assert self.crl_file is not None
        return [
            *super().argv(initial_cluster, cluster_token, state),
            "--client-crl-file",
            str(self.crl_file),
        ]


def _serial(out: str) -> str:
    return out.split("serial ")[1].split(",", maxsplit=1)[0]


def test_etcd_enforces_a_crl_of_an_imported_ca_that_openssl_refuses(
    adopted: Adopted, tmp_path: Path
) -> None:
    """What etcd 3.4 does with a CRL whose issuer lacks cRLSign: it enforces it (it
    matches serials and checks no CRL signature), while a strict verifier (OpenSSL
    with -crl_check) refuses the CRL for its issuer's key usage. Rotation (a new
    generation, which has cRLSign) is the way out; docs/ca-lifecycle.md says so."""
    host = "127.0.0.24"
    root = tmp_path / "member"
    write_etcd_member(root / "pki", adopted.cas["etcd-ca"], "etcd-crl", host)
    client_port, peer_port = free_ports([host, host])
    crl = tmp_path / "etcd-ca.crl"
    member = _CRLMember(
        "etcd-crl",
        host,
        client_port,
        peer_port,
        root,
        tmp_path / "data",
        tmp_path / "etcd.log",
        crl_file=crl,
    )
    leaves = tmp_path / "leaves"
    kept = _issue(adopted, "apiserver-etcd-client", leaves / "kept")
    revoked = _issue(adopted, "apiserver-etcd-client", leaves / "revoked")
    revoked_cert = x509.load_pem_x509_certificate(revoked.cert.read_bytes())
    serial = format(revoked_cert.serial_number, "x")
    assert (
        _kubeca(adopted, "revoke", "--serial", serial, "--reason", "key_compromise").returncode == 0
    )
    fetched = _kubeca(adopted, "crl", "--authority", "etcd-ca", "--out", str(crl))
    assert fetched.returncode == 0, fetched.stderr
    cluster = EtcdCluster([member])
    try:
        cluster.start(kept)
        offset = member.log_size()
        refused = cluster.etcdctl(revoked, "get", "x", command_timeout=2)
        assert refused.returncode != 0
        number = revoked_cert.serial_number
        logged_serial = number.to_bytes((number.bit_length() + 7) // 8, "big").hex()
        deadline = time.monotonic() + 5
        while f"{logged_serial} revoked" not in member.log_since(offset):
            assert time.monotonic() < deadline, member.log_tail()
            time.sleep(0.1)
        assert cluster.etcdctl(kept, "get", "x").returncode == 0
    finally:
        cluster.stop()
    pem = tmp_path / "crl.pem"
    subprocess.run(
        ["openssl", "crl", "-inform", "DER", "-in", str(crl), "-out", str(pem)],
        check=True,
        timeout=30,
    )
    strict = subprocess.run(
        [
            "openssl",
            "verify",
            "-crl_check",
            "-CAfile",
            str(adopted.pki / "etcd/ca.crt"),
            "-CRLfile",
            str(pem),
            str(kept.cert),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert strict.returncode != 0
    said = strict.stdout + strict.stderr
    assert "key usage does not include CRL signing" in said, said
