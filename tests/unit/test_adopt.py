"""Importing a kubeadm PKI on in-memory backends: what is checked before anything is
written, and what an import records. The SoftHSM side is tests/integration/test_adopt.py."""

from __future__ import annotations

import dataclasses
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from kubeca_client.errors import InvalidArgument
from kubeca_server.app import build_core
from kubeca_server.ca import adopt, lifecycle
from kubeca_server.ca.lint import Linter
from kubeca_server.config import parse_config
from kubeca_server.keys.memory import MemoryBackend
from kubeca_server.ledger.audit import Ledger
from kubeca_server.ledger.mirror import Mirror
from kubeca_server.store.memory import MemoryStore
from kubeca_server.store.records import Provenance

from tests.kubeadm_pki import KubeadmCA, kubeadm_ca, write_kubeadm_pki
from tests.unit.conftest import GRANTS, World, issue, minimal_config

NOW = datetime.now(UTC)
CLUSTER = ("kubernetes-ca", "etcd-ca", "front-proxy-ca")


@pytest.fixture(scope="module")
def pki_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, KubeadmCA]]:
    root = tmp_path_factory.mktemp("kubeadm") / "pki"
    return root, write_kubeadm_pki(root)


@pytest.fixture
def pki(pki_template: tuple[Path, dict[str, KubeadmCA]], tmp_path: Path) -> Path:
    copy = tmp_path / "pki"
    shutil.copytree(pki_template[0], copy)
    return copy


class Target:
    def __init__(self, tmp_path: Path) -> None:
        self.backend = MemoryBackend()
        self.store = MemoryStore()
        self.ledger = Ledger(self.store, Mirror(tmp_path / "audit.log"))

    def run(self, directory: Path, known: tuple[str, ...] = CLUSTER) -> list[str]:
        candidates, notes = adopt.kubeadm_candidates(directory, None, known, NOW)
        return adopt.import_candidates(candidates, self.backend, self.ledger, lambda: NOW) + notes

    def nothing_written(self) -> bool:
        return not lifecycle.generation_rows(self.store) and all(
            self.backend.find_key(lifecycle.key_label(name, 1)) is None for name in CLUSTER
        )


@pytest.fixture
def target(tmp_path: Path) -> Target:
    return Target(tmp_path)


def test_a_kubeadm_pki_is_imported_with_its_provenance(
    pki: Path, pki_template: tuple[Path, dict[str, KubeadmCA]], target: Target
) -> None:
    lines = target.run(pki)
    assert len([line for line in lines if "imported" in line]) == 3
    assert any("sa.key skipped" in line for line in lines)
    rows = lifecycle.generation_rows(target.store)
    for name in CLUSTER:
        (row,) = rows[name]
        assert row.provenance is Provenance.IMPORTED
        expected = pki_template[1][name].certificate.public_bytes(Encoding.PEM).decode()
        assert row.certificate_pem == expected  # the cluster's own CA certificate
        facts = target.backend.key_facts(row.key_label)
        assert facts is not None and not facts.always_sensitive
    with target.store.unit(read_only=True) as unit:
        records = [r.fields() for r in unit.audit.rows(0, 100)]
    imported = [r for r in records if r["event"] == "ca.imported"]
    assert {r["authority"] for r in imported} == set(CLUSTER)
    assert all(r["provenance"] == "imported" and r["always_sensitive"] is False for r in imported)


def test_a_second_import_is_refused(pki: Path, target: Target) -> None:
    target.run(pki)
    with pytest.raises(InvalidArgument, match="never replaced"):
        target.run(pki)


def test_a_key_that_is_not_its_certificates_is_refused(pki: Path, target: Target) -> None:
    shutil.copy(pki / "front-proxy-ca.key", pki / "etcd" / "ca.key")
    with pytest.raises(InvalidArgument, match="does not belong to"):
        target.run(pki)
    assert target.nothing_written()


def test_a_certificate_that_is_not_a_ca_is_refused(pki: Path, target: Target) -> None:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key((pki / "ca.key").read_bytes(), None)
    leaf = kubeadm_ca("kubernetes", key, ca=False)  # type: ignore[arg-type]
    (pki / "ca.crt").write_bytes(leaf.public_bytes(Encoding.PEM))
    with pytest.raises(InvalidArgument, match="not a CA certificate"):
        target.run(pki)
    assert target.nothing_written()


def test_a_directory_with_files_missing_is_refused_naming_them(pki: Path, target: Target) -> None:
    (pki / "front-proxy-ca.key").unlink()
    (pki / "etcd" / "ca.crt").unlink()
    with pytest.raises(InvalidArgument, match=r"missing: etcd/ca.crt, front-proxy-ca.key"):
        target.run(pki)
    assert target.nothing_written()


def test_an_encrypted_key_needs_its_passphrase(tmp_path: Path, target: Target) -> None:
    pki = tmp_path / "encrypted"
    write_kubeadm_pki(pki, passphrase=b"correct horse")
    with pytest.raises(InvalidArgument, match="encrypted; name its passphrase"):
        target.run(pki)
    assert target.nothing_written()
    with pytest.raises(InvalidArgument, match="passphrase is wrong"):
        adopt.kubeadm_candidates(pki, b"wrong", CLUSTER, NOW)
    candidates, _ = adopt.kubeadm_candidates(pki, b"correct horse", CLUSTER, NOW)
    assert [c.authority for c in candidates] == list(CLUSTER)


def test_sa_key_is_imported_when_a_service_account_authority_is_known(
    pki: Path, target: Target
) -> None:
    lines = target.run(pki, known=(*CLUSTER, adopt.SERVICE_ACCOUNT))
    assert not any("skipped" in line for line in lines)
    (row,) = lifecycle.generation_rows(target.store)[adopt.SERVICE_ACCOUNT]
    assert row.certificate_pem == "" and row.public_key_pem.startswith("-----BEGIN PUBLIC KEY")


def test_the_operator_is_told_which_files_to_destroy(pki: Path) -> None:
    candidates, _ = adopt.kubeadm_candidates(pki, None, CLUSTER, NOW)
    advice = "\n".join(adopt.destroy_advice(candidates))
    for name in ("ca.key", "etcd/ca.key", "front-proxy-ca.key"):
        assert str(pki / name) in advice
    assert "backups and snapshots keep copies" in advice


def test_after_import_init_adds_the_service_ca_and_leaves_verify_against_the_old_ca_file(
    pki: Path, target: Target, tmp_path: Path, linter: Linter
) -> None:
    target.run(pki)
    config = dataclasses.replace(
        parse_config(minimal_config(tmp_path), tmp_path / "kubeca.toml"), grants=dict(GRANTS)
    )
    report = lifecycle.initialize(config, target.backend, target.ledger, linter)
    assert ["already initialized, nothing changed" in line for line in report] == [
        True,
        True,
        True,
        False,
    ]
    core = build_core(config, target.backend, target.ledger, linter)
    world = World(core, target.store, tmp_path / "audit.log")
    for profile, base in (("etcd-server", "etcd/ca"), ("admin", "ca")):
        issued = issue(world, profile)
        leaf = x509.load_pem_x509_certificate(issued.certificate_pem.encode())
        original = x509.load_pem_x509_certificate((pki / f"{base}.crt").read_bytes())
        leaf.verify_directly_issued_by(original)
    # A CRL from a kubeadm CA (no cRLSign in its key usage) is still signed and valid.
    crl = x509.load_der_x509_crl(core.crls.publish("etcd-ca").der)
    original = x509.load_pem_x509_certificate((pki / "etcd/ca.crt").read_bytes())
    assert crl.is_signature_valid(original.public_key())  # type: ignore[arg-type]
