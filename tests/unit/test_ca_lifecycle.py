"""ca/lifecycle.py, ca/authority.py and ca/registry.py: each CA created once and never
replaced, its generations kept in the store, every certificate checked against its HSM
key at load, and the CAs looked up by name, generation and key identifier."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from kubeca_client.errors import ConfigError, FailedPrecondition, InternalError, NotFound
from kubeca_client.keys import KeyAlgorithm, spki_hash
from kubeca_server.ca import lifecycle
from kubeca_server.ca.authority import CertificateAuthority
from kubeca_server.ca.lint import Linter
from kubeca_server.ca.registry import CARegistry
from kubeca_server.config import parse_config
from kubeca_server.keys.memory import MemoryBackend
from kubeca_server.ledger.audit import Ledger
from kubeca_server.ledger.mirror import Mirror
from kubeca_server.profiles import build_ca
from kubeca_server.store import GenerationRow, GenerationState
from kubeca_server.store.memory import MemoryStore

from tests.unit.conftest import CASet, WorldFactory, issue, make_ca_set, minimal_config
from tests.unit.helpers import make_csr, p256_key

CA_CNS = {
    "kubernetes-ca": "kubernetes",
    "etcd-ca": "etcd-ca",
    "front-proxy-ca": "front-proxy-ca",
    "kubeca-service-ca": "kubeca-service-ca",
}
CLUSTER_CAS = ["etcd-ca", "front-proxy-ca", "kubernetes-ca"]


@pytest.fixture
def cas(linter: Linter, tmp_path: Path) -> CASet:
    """CAs of this test's own, to change and break."""
    return make_ca_set(tmp_path, linter)


@pytest.fixture
def ledger_for(tmp_path: Path) -> Iterator[Callable[[MemoryStore], Ledger]]:
    made: list[Ledger] = []

    def make(store: MemoryStore) -> Ledger:
        made.append(Ledger(store, Mirror(tmp_path / f"audit-{len(made)}.log")))
        return made[-1]

    yield make
    for ledger in made:
        ledger.close()


def rows_of(store: MemoryStore) -> list[GenerationRow]:
    with store.unit(read_only=True) as unit:
        return unit.generations.all()


def store_with(rows: list[GenerationRow]) -> MemoryStore:
    store = MemoryStore()
    with store.unit() as unit:
        for row in rows:
            unit.generations.add(row)
    return store


def changed(cas: CASet, authority: str, **changes: object) -> MemoryStore:
    """The CAs' generations, with ``authority``'s first one changed."""
    return store_with(
        [
            dataclasses.replace(row, **changes)  # type: ignore[arg-type]
            if row.authority == authority and row.generation == 1
            else row
            for row in rows_of(cas.store)
        ]
    )


def pem_of(cas: CASet, authority: str) -> str:
    return cas.authorities[authority].issuing.certificate_pem


# --- what init makes ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CA_CNS))
def test_ca_certificate_shape(ca_set: CASet, name: str) -> None:
    certificate = ca_set.authorities[name].issuing.certificate
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


def test_each_ca_is_one_issuing_generation_one_made_in_the_token(ca_set: CASet) -> None:
    for ca in ca_set.authorities.values():
        (generation,) = ca.generations
        assert (generation.number, generation.state) == (1, GenerationState.ISSUING)
        assert generation.provenance.value == "generated"
        assert ca.issuing is generation
    assert [(r.authority, r.key_label) for r in rows_of(ca_set.store)] == [
        (name, f"kubeca/{name}") for name in sorted(CA_CNS)
    ]


def test_cas_have_distinct_keys(ca_set: CASet) -> None:
    hashes_ = {ca.issuing.ca_cert_hash for ca in ca_set.authorities.values()}
    assert len(hashes_) == len(ca_set.authorities) == 4


def test_ca_cert_hash_is_sha256_of_the_spki(ca_set: CASet) -> None:
    generation = ca_set.authorities["kubernetes-ca"].issuing
    spki = generation.certificate.public_key().public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo
    )
    assert generation.ca_cert_hash == "sha256:" + hashlib.sha256(spki).hexdigest()
    assert spki_hash(generation.certificate) == generation.ca_cert_hash


def test_init_records_each_generation_with_its_audit_record(
    cas: CASet, ledger_for: Callable[[MemoryStore], Ledger], linter: Linter
) -> None:
    store = MemoryStore()
    lifecycle.initialize(cas.config, cas.backend, ledger_for(store), linter)
    with store.unit(read_only=True) as unit:
        records = [row.fields() for row in unit.audit.rows()]
    assert [(r["event"], r["authority"]) for r in records] == [
        ("ca.generation_added", name) for name in cas.config.authorities
    ]
    assert all(r["generation"] == 1 and r["state"] == "issuing" for r in records)


def test_bundles_are_published_to_the_state_dir_and_left_alone_when_current(
    cas: CASet,
) -> None:
    lifecycle.publish_bundles(cas.config, cas.authorities)
    for name, ca in cas.authorities.items():
        path = cas.config.ca_dir / f"{name}.crt"
        assert x509.load_pem_x509_certificate(path.read_bytes()) == ca.issuing.certificate
    path = cas.config.ca_dir / "etcd-ca.crt"
    before = path.stat().st_mtime_ns
    lifecycle.publish_bundles(cas.config, cas.authorities)
    assert path.stat().st_mtime_ns == before


def test_init_twice_changes_nothing(
    cas: CASet, ledger_for: Callable[[MemoryStore], Ledger], linter: Linter
) -> None:
    before = rows_of(cas.store)
    report = lifecycle.initialize(cas.config, cas.backend, ledger_for(cas.store), linter)
    assert len(report) == 4
    assert all("already initialized" in line for line in report)
    assert rows_of(cas.store) == before


def test_init_never_replaces_a_key_of_another_algorithm(
    cas: CASet, ledger_for: Callable[[MemoryStore], Ledger], linter: Linter, tmp_path: Path
) -> None:
    config = parse_config(
        minimal_config(tmp_path, authorities={"etcd-ca": {"key_algorithm": "RSA-2048"}}),
        tmp_path / "kubeca.toml",
    )
    before = rows_of(cas.store)
    report = lifecycle.initialize(config, cas.backend, ledger_for(cas.store), linter)
    (etcd,) = [line for line in report if line.startswith("etcd-ca")]
    assert "ECDSA-P256" in etcd and "RSA-2048" in etcd and "never replaces a key" in etcd
    assert rows_of(cas.store) == before


def test_init_makes_a_certificate_for_a_key_the_token_already_holds(
    cas: CASet, ledger_for: Callable[[MemoryStore], Ledger], linter: Linter
) -> None:
    store = MemoryStore()  # the token kept its keys; the store is new
    report = lifecycle.initialize(cas.config, cas.backend, ledger_for(store), linter)
    assert any(line.startswith("etcd-ca: key existed") for line in report)
    reloaded = lifecycle.load(cas.config, cas.backend, store, linter)
    assert (
        reloaded["etcd-ca"].issuing.ca_cert_hash == cas.authorities["etcd-ca"].issuing.ca_cert_hash
    )


def test_init_adopts_a_first_wave_certificate_from_the_state_dir(
    cas: CASet, ledger_for: Callable[[MemoryStore], Ledger], linter: Linter
) -> None:
    lifecycle.publish_bundles(cas.config, cas.authorities)  # where the first wave kept them
    store = MemoryStore()
    report = lifecycle.initialize(cas.config, cas.backend, ledger_for(store), linter)
    assert any(line.startswith("etcd-ca: adopted its certificate") for line in report)
    reloaded = lifecycle.load(cas.config, cas.backend, store, linter)
    for name, ca in cas.authorities.items():
        assert reloaded[name].issuing.certificate == ca.issuing.certificate


def test_init_refuses_a_certificate_without_its_key(
    cas: CASet, ledger_for: Callable[[MemoryStore], Ledger], linter: Linter
) -> None:
    lifecycle.publish_bundles(cas.config, cas.authorities)
    with pytest.raises(ConfigError, match=r"kubeca/kubernetes-ca.*refusing to make a new CA"):
        lifecycle.initialize(cas.config, MemoryBackend(), ledger_for(MemoryStore()), linter)


def test_init_refuses_a_first_wave_certificate_of_another_key(
    cas: CASet, ledger_for: Callable[[MemoryStore], Ledger], linter: Linter
) -> None:
    lifecycle.publish_bundles(cas.config, cas.authorities)
    (cas.config.ca_dir / "etcd-ca.crt").write_text(pem_of(cas, "front-proxy-ca"))
    with pytest.raises(ConfigError, match=r"etcd-ca: the certificate in .* does not match"):
        lifecycle.initialize(cas.config, cas.backend, ledger_for(MemoryStore()), linter)


def test_init_refuses_a_generation_whose_key_the_token_lacks(
    cas: CASet, ledger_for: Callable[[MemoryStore], Ledger], linter: Linter
) -> None:
    with pytest.raises(ConfigError, match="needs the HSM key 'kubeca/kubernetes-ca'"):
        lifecycle.initialize(cas.config, MemoryBackend(), ledger_for(cas.store), linter)


def test_init_refuses_a_generation_certificate_of_another_key(
    cas: CASet, ledger_for: Callable[[MemoryStore], Ledger], linter: Linter
) -> None:
    store = changed(cas, "etcd-ca", certificate_pem=pem_of(cas, "front-proxy-ca"))
    with pytest.raises(ConfigError, match=r"etcd-ca: the certificate of generation 1 does not"):
        lifecycle.initialize(cas.config, cas.backend, ledger_for(store), linter)


# --- what load checks ----------------------------------------------------------------------


def test_load_refuses_a_certificate_of_another_key(cas: CASet, linter: Linter) -> None:
    store = changed(cas, "kubernetes-ca", certificate_pem=pem_of(cas, "front-proxy-ca"))
    with pytest.raises(ConfigError, match=r"kubernetes-ca: .* does not match.*refusing"):
        lifecycle.load(cas.config, cas.backend, store, linter)


def test_load_before_init_says_to_run_init(linter: Linter, tmp_path: Path) -> None:
    config = parse_config(minimal_config(tmp_path), tmp_path / "kubeca.toml")
    with pytest.raises(ConfigError, match="init' first"):
        lifecycle.load(config, MemoryBackend(), MemoryStore(), linter)


def test_load_refuses_an_unreadable_certificate(cas: CASet, linter: Linter) -> None:
    store = changed(cas, "etcd-ca", certificate_pem="garbage")
    with pytest.raises(ConfigError, match="etcd-ca: generation 1's certificate is unreadable"):
        lifecycle.load(cas.config, cas.backend, store, linter)


def test_load_refuses_a_generation_whose_key_is_missing(cas: CASet, linter: Linter) -> None:
    store = changed(cas, "etcd-ca", key_label="kubeca/etcd-ca/gone")
    with pytest.raises(ConfigError, match="etcd-ca: its HSM key 'kubeca/etcd-ca/gone' is missing"):
        lifecycle.load(cas.config, cas.backend, store, linter)


def test_load_refuses_an_expired_ca(cas: CASet, linter: Linter) -> None:
    key = cas.backend.find_key("kubeca/etcd-ca")
    assert key is not None
    long_ago = datetime.now(UTC) - timedelta(days=30)
    expired = build_ca("etcd-ca", key.public_key(), 5, long_ago, timedelta(days=1))
    pem = expired.sign(key, hashes.SHA256()).public_bytes(Encoding.PEM).decode()
    with pytest.raises(ConfigError, match="etcd-ca: the CA certificate expired"):
        lifecycle.load(
            cas.config, cas.backend, changed(cas, "etcd-ca", certificate_pem=pem), linter
        )


def test_load_refuses_a_certificate_for_the_key_that_is_no_ca(cas: CASet, linter: Linter) -> None:
    key = cas.backend.find_key("kubeca/etcd-ca")
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "etcd-ca")])
    leaf = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(9)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    store = changed(cas, "etcd-ca", certificate_pem=leaf.public_bytes(Encoding.PEM).decode())
    with pytest.raises(ConfigError, match="etcd-ca: the certificate in the store is not a CA"):
        lifecycle.load(cas.config, cas.backend, store, linter)


# --- CA keys of other algorithms -------------------------------------------------------------


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
    kubernetes = mixed_ca_set.backend.find_key("kubeca/kubernetes-ca")
    etcd = mixed_ca_set.backend.find_key("kubeca/etcd-ca")
    assert isinstance(kubernetes, rsa.RSAPrivateKey)
    assert kubernetes.key_size == KeyAlgorithm.RSA_2048.rsa_bits
    assert isinstance(etcd, ec.EllipticCurvePrivateKey)
    assert etcd.curve.name == "secp384r1"


@pytest.mark.parametrize(
    ("profile", "digest"),
    [("admin", "sha256"), ("etcd-healthcheck-client", "sha384"), ("front-proxy-client", "sha256")],
)
def test_rsa_and_p384_cas_issue_verifiable_leaves(
    make_world: WorldFactory, mixed_ca_set: CASet, profile: str, digest: str
) -> None:
    issued = issue(make_world(cas=mixed_ca_set), profile, csr=make_csr(p256_key()))
    ca_certificate = issued.generation.certificate
    issued.certificate.verify_directly_issued_by(ca_certificate)
    aki = issued.certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    ski = ca_certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert aki.value.key_identifier == ski.value.digest
    # As Go (and so kubeadm) picks it: SHA-384 for a P-384 CA, SHA-256 otherwise.
    algorithm = issued.certificate.signature_hash_algorithm
    assert algorithm is not None and algorithm.name == digest


# --- one CA and its generations; the registry of all of them --------------------------------


def with_states(ca: CertificateAuthority, *states: GenerationState) -> CertificateAuthority:
    """``ca``'s generation, repeated once per state (same key: only states matter here)."""
    (generation,) = ca.generations
    return CertificateAuthority(
        ca.name,
        tuple(
            dataclasses.replace(generation, number=n, state=state)
            for n, state in enumerate(states, 1)
        ),
    )


def test_a_ca_needs_exactly_one_issuing_generation(ca_set: CASet) -> None:
    etcd = ca_set.authorities["etcd-ca"]
    for states in ((GenerationState.TRUSTED,), (GenerationState.ISSUING,) * 2):
        with pytest.raises(InternalError, match="issuing generations, not one"):
            _ = with_states(etcd, *states).issuing


def test_the_bundle_is_the_issuing_generation_then_the_trusted_never_the_retired(
    ca_set: CASet,
) -> None:
    ca = with_states(
        ca_set.authorities["etcd-ca"],
        GenerationState.RETIRED,
        GenerationState.TRUSTED,
        GenerationState.ISSUING,
    )
    assert [g.number for g in ca.published] == [3, 2]
    assert ca.bundle_pem == ca.issuing.certificate_pem * 2
    assert ca.generation(1) is ca.generations[0]
    assert ca.generation(4) is None


def test_the_generation_that_signed_a_certificate_is_found_by_its_key_id(
    ca_set: CASet, make_world: WorldFactory
) -> None:
    issued = issue(make_world(), "etcd-server")
    etcd = ca_set.authorities["etcd-ca"]
    signer = etcd.signer_of(issued.certificate)
    assert signer is not None and signer.number == 1
    assert ca_set.authorities["kubernetes-ca"].signer_of(issued.certificate) is None
    assert etcd.by_key_id(b"\x00" * 20) is None


def test_an_expired_issuing_generation_is_a_failed_precondition(ca_set: CASet) -> None:
    etcd = ca_set.authorities["etcd-ca"]
    assert etcd.usable_issuer(datetime.now(UTC)) is etcd.issuing
    with pytest.raises(FailedPrecondition, match=r"etcd-ca expired.*ca rotate begin"):
        etcd.usable_issuer(etcd.issuing.not_after)


def test_the_registry_finds_cas_by_name_and_names_the_known_ones(ca_set: CASet) -> None:
    registry = CARegistry(ca_set.authorities)
    assert registry.get("etcd-ca") is ca_set.authorities["etcd-ca"]
    with pytest.raises(NotFound, match=r"'root-ca'.*known: .*kubernetes-ca"):
        registry.get("root-ca")


def test_the_cluster_cas_are_every_ca_but_the_services_own(ca_set: CASet) -> None:
    registry = CARegistry(ca_set.authorities)
    assert sorted(ca.name for ca in registry.cluster()) == CLUSTER_CAS
    assert registry.service.name == "kubeca-service-ca"
    assert len(list(registry.generations())) == 4


def test_the_registry_swaps_its_snapshot_whole(ca_set: CASet) -> None:
    registry = CARegistry(ca_set.authorities)
    before = registry.snapshot()
    registry.replace({"etcd-ca": ca_set.authorities["etcd-ca"]})
    assert sorted(registry.snapshot()) == ["etcd-ca"]
    assert sorted(before) == sorted(CA_CNS)  # a snapshot taken earlier is unchanged
    with pytest.raises(NotFound):
        registry.get("kubernetes-ca")
