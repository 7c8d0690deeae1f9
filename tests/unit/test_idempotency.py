"""The same request again gets the same certificate while it is current, without a new
HSM signature; overlapping identical requests wait for one; anything different, a
renewal window, a revocation or a new issuing generation gets a new one."""

from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from kubeca_client.errors import Aborted
from kubeca_server.ca import lifecycle
from kubeca_server.ca.authority import CertificateAuthority, Generation
from kubeca_server.ca.lint import Linter
from kubeca_server.ca.signer import Signer
from kubeca_server.issuance import reservation
from kubeca_server.issuance.reservation import CLAIM_SECONDS, Reservation
from kubeca_server.ledger.audit import Entry
from kubeca_server.store import CertificateRow, GenerationState, Provenance
from kubeca_server.store.changes import AddCertificate, RevokeCertificate

from tests.unit.conftest import (
    CALLER,
    CASet,
    Clock,
    World,
    WorldFactory,
    grant,
    inventory,
    issue,
    replace_keys,
)
from tests.unit.helpers import HookedKey, make_csr, rsa_key

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def row(serial: str, **changes: Any) -> CertificateRow:
    fields: dict[str, Any] = {
        "serial": serial,
        "authority": "etcd-ca",
        "profile": "etcd-healthcheck-client",
        "subject": "CN=kube-etcd-healthcheck-client",
        "sans": (),
        "public_key_sha256": "ab" * 32,
        "fingerprint_sha256": "cd" * 32,
        "not_before": T0,
        "not_after": T0 + timedelta(seconds=900),
        "caller": "test-caller",
        "request_fingerprint": "request-1",
        "certificate_pem": "-----BEGIN CERTIFICATE-----\n",
    }
    fields.update(changes)
    return CertificateRow(**fields)


def add(world: World, *rows: CertificateRow) -> None:
    for r in rows:
        world.ledger.commit(Entry("certificate.issued", change=AddCertificate(r)))


def current(world: World, fingerprint: str, now: datetime) -> CertificateRow | None:
    with world.store.unit(read_only=True) as unit:
        return unit.inventory.current(fingerprint, now)


def claim(world: World, fingerprint: str, now: datetime) -> bool:
    with world.store.unit() as unit:
        return unit.claims.claim(fingerprint, now, now - timedelta(seconds=CLAIM_SECONDS))


def counting_signatures(world: World, ca_set: CASet, linter: Linter) -> list[str]:
    signed: list[str] = []
    replace_keys(world, ca_set, lambda key: HookedKey(key, lambda: signed.append("x")), linter)
    return signed


# --- what counts as current ---------------------------------------------------------------


def test_a_certificate_is_reusable_until_its_renewal_window(world: World) -> None:
    # 900 s of validity: the renewal window is its last third, from 600 s on.
    add(world, row("0a"))
    for seconds, reusable in ((0, True), (599, True), (600, False), (899, False), (901, False)):
        found = current(world, "request-1", T0 + timedelta(seconds=seconds))
        assert (found is not None) is reusable, seconds


def test_reuse_needs_the_same_request_and_an_unrevoked_certificate(world: World) -> None:
    add(world, row("0a"))
    assert current(world, "request-2", T0) is None
    world.ledger.commit(Entry("revoked", change=RevokeCertificate("0a", T0, "superseded")))
    assert current(world, "request-1", T0) is None


def test_the_newest_current_certificate_is_the_one_reused(world: World) -> None:
    later = T0 + timedelta(seconds=60)
    add(world, row("0a"), row("0b", not_before=later, not_after=later + timedelta(hours=1)))
    found = current(world, "request-1", later)
    assert found is not None and found.serial == "0b"


def test_a_claim_holds_until_released_or_stale(world: World) -> None:
    assert claim(world, "request-9", T0) is True
    assert claim(world, "request-9", T0) is False  # someone is signing it
    # A claim from a worker that died is taken over once it is stale.
    assert claim(world, "request-9", T0 + timedelta(seconds=CLAIM_SECONDS + 1)) is True
    with world.store.unit() as unit:
        unit.claims.release("request-9")
    assert claim(world, "request-9", T0 + timedelta(seconds=CLAIM_SECONDS + 1)) is True


def test_a_reservation_reuses_or_claims_and_gives_the_claim_back(world: World) -> None:
    add(world, row("0a"))
    with Reservation(world.store, lambda: T0) as held:
        existing = held.claim_or_reuse("request-1", lambda r: True)
        assert existing is not None and existing.serial == "0a"
    with Reservation(world.store, lambda: T0) as held:
        assert held.claim_or_reuse("request-1", lambda r: False) is None  # not reusable: claim
        assert claim(world, "request-1", T0) is False
    assert claim(world, "request-1", T0) is True  # released on the way out


def test_a_kept_reservation_leaves_the_claim_to_the_record(world: World) -> None:
    with Reservation(world.store, lambda: T0) as held:
        assert held.claim_or_reuse("request-7", lambda r: True) is None
        held.keep()
    assert claim(world, "request-7", T0) is False


def test_a_claim_held_past_the_wait_is_aborted(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reservation, "CLAIM_WAIT_SECONDS", 0.1)
    assert claim(world, "request-5", T0) is True
    with Reservation(world.store, lambda: T0) as held, pytest.raises(Aborted, match="try again"):
        held.claim_or_reuse("request-5", lambda r: True)


# --- through the pipeline ------------------------------------------------------------------


def test_twenty_identical_requests_yield_one_certificate_and_one_signature(
    world: World, ca_set: CASet, linter: Linter
) -> None:
    signed = counting_signatures(world, ca_set, linter)
    csr = make_csr()
    answers = [issue(world, "admin", csr=csr) for _ in range(20)]
    assert len({a.serial_hex for a in answers}) == 1
    assert [a.reused for a in answers] == [False] + [True] * 19
    assert len(signed) == 1
    events = [r["event"] for r in world.records() if r.get("serial") == answers[0].serial_hex]
    assert events == ["certificate.issued"] + ["certificate.reused"] * 19
    assert len(inventory(world.store)) == 1
    reused = world.records()[-1]
    assert reused["request_fingerprint"] == world.records()[0]["request_fingerprint"]
    assert answers[-1].certificate == answers[0].certificate


def test_overlapping_identical_requests_share_one_certificate(
    make_world: WorldFactory, ca_set: CASet, linter: Linter
) -> None:
    world = make_world(sqlite=True)
    signed = counting_signatures(world, ca_set, linter)
    csr = make_csr()
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda _: issue(world, "admin", csr=csr), range(8)))
    assert len({a.serial_hex for a in answers}) == 1
    assert sorted(a.reused for a in answers) == [False] + [True] * 7
    assert len(signed) == 1


def test_a_request_inside_the_renewal_window_gets_a_new_certificate(
    make_world: WorldFactory,
) -> None:
    clock = Clock()
    world, csr = make_world(clock=clock), make_csr()
    lifetime = timedelta(minutes=15)
    first = issue(world, "admin", csr=csr, lifetime=lifetime)
    cert = first.certificate
    validity = cert.not_valid_after_utc - cert.not_valid_before_utc
    window_opens = cert.not_valid_after_utc - validity / 3
    clock.now = window_opens - timedelta(seconds=1)
    before = issue(world, "admin", csr=csr, lifetime=lifetime)
    clock.now = window_opens + timedelta(seconds=1)
    inside = issue(world, "admin", csr=csr, lifetime=lifetime)
    assert (before.reused, before.serial_hex) == (True, first.serial_hex)
    assert not inside.reused
    assert inside.serial_hex != first.serial_hex


def test_force_new_always_signs_a_new_certificate(
    make_world: WorldFactory, ca_set: CASet, linter: Linter
) -> None:
    clock = Clock()
    world = make_world(clock=clock)
    signed = counting_signatures(world, ca_set, linter)
    csr = make_csr()
    first = issue(world, "admin", csr=csr)
    clock.advance(timedelta(seconds=2))
    forced = issue(world, "admin", csr=csr, force_new=True)
    assert not forced.reused
    assert forced.serial_hex != first.serial_hex
    assert len(signed) == 2
    # The forced one is current too, and newer: a plain repeat now gets it.
    again = issue(world, "admin", csr=csr)
    assert (again.reused, again.serial_hex) == (True, forced.serial_hex)


def test_another_key_lifetime_parameter_profile_or_caller_gets_a_new_certificate(
    make_world: WorldFactory,
) -> None:
    other = dataclasses.replace(CALLER, identity="other-caller")
    world = make_world(grants={CALLER.identity: grant(), "other-caller": grant("other-caller")})
    csr = make_csr()
    node = {"node_name": "cp-1", "advertise_address": "192.0.2.10"}
    first = issue(world, "etcd-server", node, csr)
    variants = [
        issue(world, "etcd-server", node, make_csr(rsa_key())),
        issue(world, "etcd-server", node, csr, timedelta(days=2)),
        issue(world, "etcd-server", {**node, "node_name": "cp-2"}, csr),
        issue(world, "etcd-peer", node, csr),
        issue(world, "etcd-server", node, csr, caller=other),
    ]
    assert not any(v.reused for v in variants)
    assert len({first.serial_hex, *(v.serial_hex for v in variants)}) == 6
    again = issue(world, "etcd-server", node, csr)
    assert (again.reused, again.serial_hex) == (True, first.serial_hex)


def test_a_revoked_certificate_is_never_reused(world: World) -> None:
    csr = make_csr()
    first = issue(world, "admin", csr=csr)
    world.core.inventory.revoke(CALLER, first.serial_hex, "key_compromise")
    again = issue(world, "admin", csr=csr)
    assert not again.reused
    assert again.serial_hex != first.serial_hex


def test_after_a_rotation_switch_the_same_request_gets_the_new_generations_certificate(
    world: World, linter: Linter
) -> None:
    csr = make_csr()
    first = issue(world, "admin", csr=csr)
    old = world.core.registry.get("kubernetes-ca")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    certificate = lifecycle.self_signed("kubernetes-ca", key, timedelta(days=30), linter, now)
    new = Generation(
        "kubernetes-ca",
        2,
        certificate,
        Signer(key, linter),
        GenerationState.ISSUING,
        Provenance.GENERATED,
    )
    rotated = CertificateAuthority(
        "kubernetes-ca",
        (dataclasses.replace(old.issuing, state=GenerationState.TRUSTED), new),
    )
    world.core.registry.replace({**world.core.registry.snapshot(), "kubernetes-ca": rotated})
    again = issue(world, "admin", csr=csr)
    assert not again.reused
    assert again.generation.number == 2
    again.certificate.verify_directly_issued_by(certificate)
    assert again.serial_hex != first.serial_hex


def test_an_identical_request_behind_a_stuck_one_is_aborted_then_gets_its_certificate(
    world: World, ca_set: CASet, linter: Linter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reservation, "CLAIM_WAIT_SECONDS", 0.2)
    signing, release = threading.Event(), threading.Event()

    def slow() -> None:
        signing.set()
        assert release.wait(10)

    replace_keys(world, ca_set, lambda key: HookedKey(key, slow), linter)
    csr = make_csr()
    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(issue, world, "admin", None, csr)
        assert signing.wait(10)  # the first holds the claim, inside the HSM
        with pytest.raises(Aborted, match="identical request is still being issued") as caught:
            issue(world, "admin", csr=csr)
        assert "request_fingerprint" in caught.value.context
        release.set()
        issued = first.result(10)
    again = issue(world, "admin", csr=csr)
    assert (again.reused, again.serial_hex) == (True, issued.serial_hex)
