"""CA rotation on in-memory backends: the three steps, their refusals, what issues and
what is published at each step, and workers picking a step up from the store."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from kubeca_client.authorities import ALL_CAS, ETCD_CA, KUBERNETES_CA
from kubeca_client.errors import FailedPrecondition, NotFound
from kubeca_client.keys import KeyAlgorithm
from kubeca_server.app import Core, build_core
from kubeca_server.ca import lifecycle
from kubeca_server.ca.authority import authority_key_identifier, key_identifier
from kubeca_server.ca.lint import Linter
from kubeca_server.ca.rotation import Rotation
from kubeca_server.ledger.audit import Ledger
from kubeca_server.ledger.mirror import Mirror
from kubeca_server.store.changes import AddGeneration
from kubeca_server.store.records import GenerationRow, GenerationState, KeyKind, Provenance

from tests.unit.conftest import GRANTS, CASet, World, issue, make_ca_set


@dataclass
class Rig:
    """Fresh CAs (one test's own), a rotation over them and a running core."""

    cas: CASet
    ledger: Ledger
    rotation: Rotation
    core: Core
    watch: lifecycle.GenerationWatch

    def states(self, name: str) -> list[tuple[int, GenerationState]]:
        rows = lifecycle.generation_rows(self.cas.store)[name]
        return [(r.generation, r.state) for r in rows]

    def events(self, event: str) -> int:
        with self.cas.store.unit(read_only=True) as unit:
            return sum(1 for r in unit.audit.rows(0, 10_000) if r.fields().get("event") == event)


@pytest.fixture
def rig(tmp_path: Path, linter: Linter) -> Rig:
    cas = make_ca_set(tmp_path, linter)
    ledger = Ledger(cas.store, Mirror(tmp_path / "audit.log"))
    now = lambda: datetime.now(UTC)  # noqa: E731
    rotation = Rotation(cas.config, cas.backend, ledger, linter, now)
    config = dataclasses.replace(cas.config, grants=dict(GRANTS))
    core = build_core(config, cas.backend, ledger, linter, now)
    watch = lifecycle.GenerationWatch(
        cas.config, cas.backend, cas.store, linter, core.registry, now
    )
    return Rig(cas, ledger, rotation, core, watch)


def test_begin_adds_a_trusted_generation_with_a_cross_certificate(rig: Rig) -> None:
    old = rig.core.registry.get(ETCD_CA).issuing
    line = rig.rotation.begin(ETCD_CA)
    assert "generation 2 begun" in line
    assert rig.states(ETCD_CA) == [(1, GenerationState.ISSUING), (2, GenerationState.TRUSTED)]
    assert rig.watch.check()
    ca = rig.core.registry.get(ETCD_CA)
    new = ca.generation(2)
    assert new is not None
    assert ca.issuing.number == 1  # the old one still issues
    assert ca.bundle_pem == old.certificate_pem + new.certificate_pem
    assert new.certificate.subject == old.certificate.subject
    cross = x509.load_pem_x509_certificate(new.cross_certificate_pem.encode())
    cross.verify_directly_issued_by(old.certificate)
    assert cross.subject == new.certificate.subject
    assert cross.public_key() == new.certificate.public_key()
    assert key_identifier(cross) == new.key_id
    assert authority_key_identifier(cross) == old.key_id


def test_each_step_taken_twice_changes_nothing_the_second_time(rig: Rig) -> None:
    rig.rotation.begin(ETCD_CA)
    assert "nothing changed" in rig.rotation.begin(ETCD_CA)
    rig.rotation.switch(ETCD_CA)
    assert "nothing changed" in rig.rotation.switch(ETCD_CA)
    rig.rotation.finish(ETCD_CA)
    assert "nothing changed" in rig.rotation.finish(ETCD_CA)
    assert rig.states(ETCD_CA) == [(1, GenerationState.RETIRED), (2, GenerationState.ISSUING)]
    assert rig.events("ca.rotation.begun") == 1
    assert rig.events("ca.rotation.switched") == 1
    assert rig.events("ca.rotation.finished") == 1


def test_steps_out_of_order_are_refused_and_change_nothing(rig: Rig) -> None:
    with pytest.raises(FailedPrecondition, match="rotate begin"):
        rig.rotation.switch(ETCD_CA)
    rig.rotation.begin(ETCD_CA)
    with pytest.raises(FailedPrecondition, match="rotate switch"):
        rig.rotation.finish(ETCD_CA)
    rig.rotation.switch(ETCD_CA)
    with pytest.raises(FailedPrecondition, match="rotate finish"):
        rig.rotation.begin(ETCD_CA)
    assert rig.states(ETCD_CA) == [(1, GenerationState.TRUSTED), (2, GenerationState.ISSUING)]


def test_an_unknown_authority_is_not_found(rig: Rig) -> None:
    with pytest.raises(NotFound, match="no authority named 'nope'"):
        rig.rotation.begin("nope")


def test_leaves_follow_the_switch_and_finish_waits_for_the_old_ones(
    rig: Rig, tmp_path: Path
) -> None:
    world = World(rig.core, rig.cas.store, tmp_path / "audit.log")
    old_key_id = rig.core.registry.get(ETCD_CA).issuing.key_id
    rig.rotation.begin(ETCD_CA)
    rig.watch.check()
    issue(world, "apiserver-etcd-client")  # will not be renewed
    before = x509.load_pem_x509_certificate(issue(world, "etcd-server").certificate_pem.encode())
    assert authority_key_identifier(before) == old_key_id  # begin does not switch issuance
    rig.rotation.switch(ETCD_CA)
    assert rig.watch.check()  # a running worker sees the switch without a restart
    new_key_id = rig.core.registry.get(ETCD_CA).issuing.key_id
    after = x509.load_pem_x509_certificate(issue(world, "etcd-server").certificate_pem.encode())
    assert authority_key_identifier(after) == new_key_id != old_key_id
    # etcd-server was renewed by the new generation; apiserver-etcd-client was not.
    with pytest.raises(
        FailedPrecondition,
        match=r"signed 1 unexpired, unrevoked certificates not yet renewed by generation 2 "
        r"\(apiserver-etcd-client: 1\)",
    ):
        rig.rotation.finish(ETCD_CA)
    assert "1 certificates it signed are no longer trusted" in rig.rotation.finish(
        ETCD_CA, force=True
    )
    assert rig.watch.check()
    ca = rig.core.registry.get(ETCD_CA)
    assert ca.bundle_pem == ca.issuing.certificate_pem


def test_finish_needs_no_force_once_every_old_leaf_is_renewed(rig: Rig, tmp_path: Path) -> None:
    world = World(rig.core, rig.cas.store, tmp_path / "audit.log")
    for profile in ("etcd-server", "apiserver-etcd-client"):
        issue(world, profile)
    rig.rotation.begin(ETCD_CA)
    rig.rotation.switch(ETCD_CA)
    rig.watch.check()
    issue(world, "etcd-server")
    with pytest.raises(FailedPrecondition, match=r"\(apiserver-etcd-client: 1\)"):
        rig.rotation.finish(ETCD_CA)
    issue(world, "apiserver-etcd-client")
    assert "retired;" in rig.rotation.finish(ETCD_CA)


def test_crls_are_published_for_both_generations_during_a_rotation(rig: Rig) -> None:
    crls = rig.core.crls
    rig.rotation.begin(ETCD_CA)
    rig.rotation.switch(ETCD_CA)
    rig.watch.check()
    crls.refresh_all()
    ca = rig.core.registry.get(ETCD_CA)
    old = ca.generation(1)
    assert old is not None
    main = x509.load_der_x509_crl(crls.path(ETCD_CA).read_bytes())
    assert main.is_signature_valid(ca.issuing.public_key)  # type: ignore[arg-type]
    of_old = x509.load_der_x509_crl(crls.path(ETCD_CA, 1).read_bytes())
    assert of_old.is_signature_valid(old.public_key)  # type: ignore[arg-type]
    rig.rotation.finish(ETCD_CA)
    rig.watch.check()
    crls.refresh_all()
    assert not crls.path(ETCD_CA, 1).exists()  # a retired generation publishes nothing


@pytest.mark.parametrize("name", ALL_CAS)
def test_every_ca_rotates_through_the_three_steps(rig: Rig, name: str) -> None:
    rig.rotation.begin(name)
    rig.rotation.switch(name)
    rig.rotation.finish(name, force=True)
    assert rig.states(name) == [(1, GenerationState.RETIRED), (2, GenerationState.ISSUING)]
    assert rig.watch.check()
    assert rig.core.registry.get(name).issuing.number == 2
    # The others are untouched.
    for other in ALL_CAS:
        if other != name:
            assert rig.states(other) == [(1, GenerationState.ISSUING)]


def test_a_second_rotation_makes_generation_three(rig: Rig) -> None:
    for _ in range(2):
        rig.rotation.begin(KUBERNETES_CA)
        rig.rotation.switch(KUBERNETES_CA)
        rig.rotation.finish(KUBERNETES_CA, force=True)
    assert rig.states(KUBERNETES_CA) == [
        (1, GenerationState.RETIRED),
        (2, GenerationState.RETIRED),
        (3, GenerationState.ISSUING),
    ]
    assert rig.cas.backend.find_key(lifecycle.key_label(KUBERNETES_CA, 3)) is not None


def test_a_token_signing_key_rotates_with_the_same_verbs(rig: Rig) -> None:
    """The service-account key (issue 11) is generations of kind jwt under its own
    name: no certificate, so no cross-certificate and no leaves to wait for."""
    label = lifecycle.key_label("service-account", 1)
    key = rig.cas.backend.create_key(label, KeyAlgorithm.RSA_2048)
    public = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    row = GenerationRow(
        "service-account",
        1,
        label,
        "",
        GenerationState.ISSUING,
        Provenance.GENERATED,
        datetime.now(UTC),
        KeyKind.JWT,
        public.decode(),
    )
    with rig.cas.store.unit() as unit:
        AddGeneration(row).apply(unit, 0)
    assert "generation 2 begun" in rig.rotation.begin("service-account")
    rig.rotation.switch("service-account")
    rig.rotation.finish("service-account")
    rows = lifecycle.generation_rows(rig.cas.store)["service-account"]
    assert [(r.generation, r.state, r.kind) for r in rows] == [
        (1, GenerationState.RETIRED, KeyKind.JWT),
        (2, GenerationState.ISSUING, KeyKind.JWT),
    ]
    new_key = rig.cas.backend.find_key(rows[1].key_label)
    assert new_key is not None
    assert rows[1].certificate_pem == "" and rows[1].cross_certificate_pem == ""
    assert (
        rows[1].public_key_pem
        == new_key.public_key()
        .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
