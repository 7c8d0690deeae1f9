"""authorities.py: CAs created once, never replaced, and checked against their keys at load."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from kubeca_client.errors import ConfigError
from kubeca_client.keys import KeyAlgorithm, spki_hash
from kubeca_server.audit import AuditLog
from kubeca_server.authorities import init_authorities, load_authorities
from kubeca_server.authority import Authority, Caller, IssueRequest
from kubeca_server.config import parse_config
from kubeca_server.keys.memory import MemoryBackend
from kubeca_server.lint import Linter
from kubeca_server.profiles import build_ca

from tests.unit.conftest import GRANTS, CASet, make_ca_set, minimal_config
from tests.unit.helpers import make_csr, p256_key

CA_CNS = {"kubernetes-ca": "kubernetes", "etcd-ca": "etcd-ca", "front-proxy-ca": "front-proxy-ca"}


@pytest.mark.parametrize("name", sorted(CA_CNS))
def test_ca_certificate_shape(ca_set: CASet, name: str) -> None:
    certificate = ca_set.authorities[name].certificate
    cn = certificate.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    assert [a.value for a in cn] == [CA_CNS[name]]
    assert certificate.issuer == certificate.subject
    certificate.verify_directly_issued_by(certificate)
    constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    usage = certificate.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    assert certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert lifetime == timedelta(days=3650, minutes=5)
    assert certificate.serial_number > 0


def test_cas_have_distinct_keys(ca_set: CASet) -> None:
    hashes_ = {ca.ca_cert_hash for ca in ca_set.authorities.values()}
    assert len(hashes_) == 3


def test_ca_cert_hash_is_sha256_of_the_spki(ca_set: CASet) -> None:
    ca = ca_set.authorities["kubernetes-ca"]
    spki = ca.certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    assert ca.ca_cert_hash == "sha256:" + hashlib.sha256(spki).hexdigest()
    assert spki_hash(ca.certificate) == ca.ca_cert_hash


def test_ca_certificates_are_written_to_the_state_dir(ca_set: CASet) -> None:
    for name, ca in ca_set.authorities.items():
        path = ca_set.config.ca_dir / f"{name}.crt"
        assert x509.load_pem_x509_certificate(path.read_bytes()) == ca.certificate


def test_init_twice_changes_nothing(linter: Linter, tmp_path: Path) -> None:
    cas = make_ca_set(tmp_path, linter)
    before = {n: (tmp_path / "state" / "ca" / f"{n}.crt").read_bytes() for n in CA_CNS}
    report = init_authorities(cas.config, cas.backend, linter)
    assert all("already initialized" in line for line in report)
    after = {n: (tmp_path / "state" / "ca" / f"{n}.crt").read_bytes() for n in CA_CNS}
    assert before == after


def test_init_recreates_a_missing_certificate_for_an_existing_key(
    linter: Linter, tmp_path: Path
) -> None:
    cas = make_ca_set(tmp_path, linter)
    (cas.config.ca_dir / "etcd-ca.crt").unlink()
    report = init_authorities(cas.config, cas.backend, linter)
    assert any(line.startswith("etcd-ca: key existed") for line in report)
    reloaded = load_authorities(cas.config, cas.backend)
    assert reloaded["etcd-ca"].ca_cert_hash == cas.authorities["etcd-ca"].ca_cert_hash


def test_init_refuses_a_certificate_without_its_key(linter: Linter, tmp_path: Path) -> None:
    cas = make_ca_set(tmp_path, linter)
    with pytest.raises(ConfigError, match="kubeca/kubernetes-ca"):
        init_authorities(cas.config, MemoryBackend(), linter)


def test_init_refuses_a_certificate_of_another_key(linter: Linter, tmp_path: Path) -> None:
    cas = make_ca_set(tmp_path, linter)
    other = (cas.config.ca_dir / "front-proxy-ca.crt").read_bytes()
    (cas.config.ca_dir / "etcd-ca.crt").write_bytes(other)
    with pytest.raises(ConfigError, match=r"etcd-ca: the certificate .* does not match"):
        init_authorities(cas.config, cas.backend, linter)


def test_load_refuses_a_certificate_of_another_key(linter: Linter, tmp_path: Path) -> None:
    cas = make_ca_set(tmp_path, linter)
    other = (cas.config.ca_dir / "front-proxy-ca.crt").read_bytes()
    (cas.config.ca_dir / "kubernetes-ca.crt").write_bytes(other)
    with pytest.raises(ConfigError, match=r"kubernetes-ca: .* does not match"):
        load_authorities(cas.config, cas.backend)


def test_load_before_init_says_to_run_init(tmp_path: Path) -> None:
    config = parse_config(minimal_config(tmp_path), tmp_path / "kubeca.toml")
    with pytest.raises(ConfigError, match="init' first"):
        load_authorities(config, MemoryBackend())


def test_load_refuses_a_non_pem_certificate(linter: Linter, tmp_path: Path) -> None:
    cas = make_ca_set(tmp_path, linter)
    (cas.config.ca_dir / "etcd-ca.crt").write_text("garbage")
    with pytest.raises(ConfigError, match=r"etcd-ca\.crt is not a PEM certificate"):
        load_authorities(cas.config, cas.backend)


def test_load_refuses_an_expired_ca(linter: Linter, tmp_path: Path) -> None:
    cas = make_ca_set(tmp_path, linter)
    key = cas.backend.find_key("kubeca/etcd-ca")
    assert key is not None
    long_ago = datetime.now(UTC) - timedelta(days=30)
    expired = build_ca("etcd-ca", key.public_key(), 5, long_ago, timedelta(days=1))
    pem = expired.sign(key, hashes.SHA256()).public_bytes(Encoding.PEM)
    (cas.config.ca_dir / "etcd-ca.crt").write_bytes(pem)
    with pytest.raises(ConfigError, match="etcd-ca: the CA certificate expired"):
        load_authorities(cas.config, cas.backend)


@pytest.fixture(scope="module")
def mixed_ca_set(linter: Linter, tmp_path_factory: pytest.TempPathFactory) -> CASet:
    """RSA-2048 kubernetes-ca, P-384 etcd-ca, default P-256 front-proxy-ca."""
    return make_ca_set(
        tmp_path_factory.mktemp("mixed-cas"),
        linter,
        authorities={
            "kubernetes-ca": {"key_algorithm": "RSA-2048"},
            "etcd-ca": {"key_algorithm": "ECDSA-P384"},
        },
    )


def test_ca_keys_follow_the_configured_algorithm(mixed_ca_set: CASet) -> None:
    kubernetes = mixed_ca_set.authorities["kubernetes-ca"].key
    etcd = mixed_ca_set.authorities["etcd-ca"].key
    assert isinstance(kubernetes, rsa.RSAPrivateKey)
    assert kubernetes.key_size == KeyAlgorithm.RSA_2048.rsa_bits
    assert isinstance(etcd, ec.EllipticCurvePrivateKey)
    assert etcd.curve.name == "secp384r1"


@pytest.mark.parametrize("profile", ["admin", "etcd-healthcheck-client", "front-proxy-client"])
def test_rsa_and_p384_cas_issue_verifiable_leaves(
    mixed_ca_set: CASet, linter: Linter, tmp_path: Path, profile: str
) -> None:
    audit = AuditLog(tmp_path / "audit.log")
    try:
        authority = Authority(
            mixed_ca_set.authorities, mixed_ca_set.config.leaf, audit, linter, grants=GRANTS
        )
        issued = authority.issue(Caller("test-caller"), IssueRequest(profile, make_csr(p256_key())))
    finally:
        audit.close()
    issued.certificate.verify_directly_issued_by(issued.authority.certificate)
    aki = issued.certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    ski = issued.authority.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert aki.value.key_identifier == ski.value.digest
