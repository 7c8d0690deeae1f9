"""issuance/inventory.py: what was issued, listed page by page as far as the caller's
grant reaches, and revoked with its record in the same transaction, then a new CRL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from kubeca_client.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from kubeca_server.issuance.inventory import MAX_PAGE
from kubeca_server.issuance.model import ANONYMOUS, Caller
from kubeca_server.ledger.audit import Entry
from kubeca_server.ledger.verify import InventoryEntry, verify
from kubeca_server.store import CertificateRow, InventoryQuery
from kubeca_server.store.changes import AddCertificate, RevokeCertificate

from tests.unit.conftest import (
    CALLER,
    CASet,
    World,
    WorldFactory,
    chain,
    grant,
    inventory,
    issue,
    token_caller,
)

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
        "request_fingerprint": f"request-{serial}",
        "certificate_pem": "-----BEGIN CERTIFICATE-----\n",
    }
    fields.update(changes)
    return CertificateRow(**fields)


def add(world: World, *rows: CertificateRow) -> None:
    for r in rows:
        world.ledger.commit(
            Entry("certificate.issued", {"serial": r.serial}, change=AddCertificate(r))
        )


def serials(world: World, caller: Caller = CALLER, **query: Any) -> list[str]:
    page = world.core.inventory.page(caller, InventoryQuery(**query), "", 0)
    return sorted(r.serial for r in page.rows)


def find(world: World, serial: str) -> CertificateRow | None:
    with world.store.unit(read_only=True) as unit:
        return unit.inventory.find(serial)


# --- the inventory holds what was issued ---------------------------------------------------


def test_an_issued_certificate_has_its_inventory_row_and_record(
    make_world: WorldFactory, ca_set: CASet
) -> None:
    world = make_world(sqlite=True)
    issued = issue(world, "admin")
    found = find(world, issued.serial_hex)
    assert found is not None
    assert found.certificate_pem == issued.certificate_pem
    record = next(r for r in chain(world.store) if r.seq == found.audit_seq).fields()
    assert (record["event"], record["serial"]) == ("certificate.issued", issued.serial_hex)
    result = verify(
        chain(world.store),
        [],
        [
            InventoryEntry(r.serial, r.audit_seq, r.fingerprint_sha256, r.revoked_at is not None)
            for r in inventory(world.store)
        ],
        ca_set.authorities["kubeca-service-ca"].issuing.public_key,
    )
    assert result.problems == []


# --- listing ---------------------------------------------------------------------------------


def test_listing_filters_by_authority_profile_expiry_and_revocation(world: World) -> None:
    add(
        world,
        row("01"),
        row("02", not_after=T0 + timedelta(days=30)),
        row("03", authority="kubernetes-ca", profile="admin"),
        row("04", authority="kubernetes-ca", profile="kube-proxy"),
    )
    world.ledger.commit(Entry("revoked", change=RevokeCertificate("04", T0, "superseded")))
    assert serials(world) == ["01", "02", "03", "04"]
    assert serials(world, authority="etcd-ca") == ["01", "02"]
    assert serials(world, authority="kubernetes-ca", profile="admin") == ["03"]
    assert serials(world, expiring_before=T0 + timedelta(hours=1)) == ["01", "03", "04"]
    assert serials(world, revoked_only=True) == ["04"]


def test_expiring_within_is_counted_from_now(make_world: WorldFactory) -> None:
    world = make_world(clock=lambda: T0)
    query = world.core.inventory.query("", "", timedelta(hours=1), False)
    assert query.expiring_before == T0 + timedelta(hours=1)
    assert world.core.inventory.query("etcd-ca", "", None, True).expiring_before is None


def test_pages_walk_the_whole_inventory_in_expiry_order_once(world: World) -> None:
    add(
        world,
        *(row(f"{n:02x}", not_after=T0 + timedelta(hours=n % 7, seconds=n)) for n in range(23)),
    )
    seen: list[CertificateRow] = []
    token = ""
    while True:
        page = world.core.inventory.page(CALLER, InventoryQuery(), token, 5)
        assert len(page.rows) <= 5
        seen.extend(page.rows)
        token = page.next_token
        if not token:
            break
    assert len(seen) == 23
    assert len({r.serial for r in seen}) == 23
    assert [(r.not_after, r.serial) for r in seen] == sorted((r.not_after, r.serial) for r in seen)


def test_a_page_size_out_of_bounds_is_refused(world: World) -> None:
    for size in (-1, MAX_PAGE + 1):
        with pytest.raises(InvalidArgument, match="page_size"):
            world.core.inventory.page(CALLER, InventoryQuery(), "", size)


@pytest.mark.parametrize("token", ["not-base64!", "bnVsbA", "WzEsIDJd", "WyJ4IiwgIjAxIl0"])
def test_a_page_token_this_service_did_not_hand_out_is_refused(world: World, token: str) -> None:
    # "null", "[1, 2]" (a number for a serial), '["x", "01"]' (a string for a time)
    with pytest.raises(InvalidArgument, match="page_token is not one this service handed out"):
        world.core.inventory.page(CALLER, InventoryQuery(), token, 0)


def test_a_listing_shows_only_what_the_callers_grant_could_have_issued(
    make_world: WorldFactory,
) -> None:
    admins = grant("admins", profiles=frozenset({"admin"}))
    world = make_world(grants={CALLER.identity: grant(), "admins": admins})
    add(world, row("01"), row("02", authority="kubernetes-ca", profile="admin"))
    assert serials(world) == ["01", "02"]
    assert serials(world, Caller("admins")) == ["02"]


def test_listing_is_for_operators_with_a_grant(world: World) -> None:
    for caller, error in (
        (Caller("nobody"), PermissionDenied),
        (token_caller("abcdef.0123456789abcdef"), Unauthenticated),
        (Caller("anonymous", kind=ANONYMOUS), Unauthenticated),
    ):
        with pytest.raises(error):
            world.core.inventory.page(caller, InventoryQuery(), "", 0)


# --- revoking ---------------------------------------------------------------------------------


def test_revoking_needs_revoke_in_the_grant(make_world: WorldFactory) -> None:
    world = make_world(grants={CALLER.identity: grant(revoke=False)})
    issued = issue(world, "admin")
    with pytest.raises(PermissionDenied, match="revoke = true"):
        world.core.inventory.revoke(CALLER, issued.serial_hex, "superseded")
    found = find(world, issued.serial_hex)
    assert found is not None and found.revoked_at is None
    assert [r["event"] for r in world.records()] == ["certificate.issued"]


def test_a_grant_that_could_not_have_issued_it_may_not_revoke_it(make_world: WorldFactory) -> None:
    admins = grant("admins", profiles=frozenset({"admin"}))
    world = make_world(grants={CALLER.identity: grant(), "admins": admins})
    issued = issue(world, "etcd-healthcheck-client")
    with pytest.raises(PermissionDenied, match="may not revoke its certificates either"):
        world.core.inventory.revoke(Caller("admins"), issued.serial_hex, "superseded")
    found = find(world, issued.serial_hex)
    assert found is not None and found.revoked_at is None


def test_revocation_is_recorded_in_the_chain_with_the_inventory_change(
    make_world: WorldFactory,
) -> None:
    world = make_world(clock=lambda: T0)
    issued = issue(world, "admin")
    revoked, _ = world.core.inventory.revoke(
        CALLER, "0x" + issued.serial_hex.upper(), "key_compromise"
    )
    assert (revoked.serial, revoked.revoked_at, revoked.revocation_reason) == (
        issued.serial_hex,
        T0,
        "key_compromise",
    )
    record = next(r for r in world.records() if r["event"] == "certificate.revoked")
    assert (record["serial"], record["reason"], record["level"]) == (
        issued.serial_hex,
        "key_compromise",
        "warning",
    )
    assert (record["authority"], record["profile"]) == ("kubernetes-ca", "admin")
    assert find(world, issued.serial_hex) == revoked
    assert record["seq"] < next(r["seq"] for r in world.records() if r["event"] == "crl.generated")


def test_revocation_publishes_the_cas_new_crl_listing_it(world: World) -> None:
    issued = issue(world, "etcd-healthcheck-client")
    _, published = world.core.inventory.revoke(CALLER, issued.serial_hex, "key_compromise")
    crl = x509.load_der_x509_crl(published.der)
    entry = crl.get_revoked_certificate_by_serial_number(issued.certificate.serial_number)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is (
        x509.ReasonFlags.key_compromise
    )
    assert world.core.crls.path("etcd-ca").read_bytes() == published.der


def test_revocation_accepts_the_serial_as_openssl_prints_it(world: World) -> None:
    """openssl prints whole octets ("0A1B..." and "0a:1b:..."); about one serial in
    eight has a leading zero nibble that the server's own hex spelling leaves out."""
    odd = next(
        i
        for i in (issue(world, "admin", force_new=True) for _ in range(200))
        if len(i.serial_hex) % 2
    )
    octets = bytes.fromhex("0" + odd.serial_hex)
    revoked, _ = world.core.inventory.revoke(
        CALLER, ":".join(f"{b:02x}" for b in octets), "superseded"
    )
    assert revoked.serial == odd.serial_hex


def test_revoking_twice_or_an_unknown_serial_is_refused_and_changes_nothing(world: World) -> None:
    issued = issue(world, "admin")
    world.core.inventory.revoke(CALLER, issued.serial_hex, "superseded")
    with pytest.raises(InvalidArgument, match="revoked already"):
        world.core.inventory.revoke(CALLER, issued.serial_hex, "superseded")
    with pytest.raises(NotFound, match="no certificate with serial"):
        world.core.inventory.revoke(CALLER, "abcdef", "superseded")
    assert [r["event"] for r in world.records()].count("certificate.revoked") == 1


def test_revoking_is_for_operators(world: World) -> None:
    issued = issue(world, "admin")
    with pytest.raises(Unauthenticated):
        world.core.inventory.revoke(
            token_caller("abcdef.0123456789abcdef"), issued.serial_hex, "superseded"
        )
