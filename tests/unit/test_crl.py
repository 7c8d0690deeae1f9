"""ca/crl.py: each cluster CA's CRL, signed by its issuing generation, numbered upwards
for ever, and never replaced on disk by an older one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from kubeca_client.errors import InvalidArgument, NotFound
from kubeca_client.revocation import REASONS as ACCEPTED
from kubeca_client.revocation import parse_reason
from kubeca_server.ca.crl import DEFAULT_VALIDITY
from kubeca_server.ca.crl import REASONS as CODES

from tests.unit.conftest import CALLER, Clock, World, WorldFactory, issue


def number_of(der: bytes) -> int:
    crl = x509.load_der_x509_crl(der)
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def test_a_crl_is_signed_by_the_issuing_generation_and_recorded(world: World) -> None:
    published = world.core.crls.publish("etcd-ca")
    crl = x509.load_der_x509_crl(published.der)
    issuer = world.core.registry.get("etcd-ca").issuing
    assert crl.issuer == issuer.certificate.subject
    assert crl.is_signature_valid(issuer.public_key)  # type: ignore[arg-type]
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == issuer.key_id
    assert published.next_update - published.this_update == DEFAULT_VALIDITY
    (record,) = world.records()
    assert (record["event"], record["authority"], record["crl_number"]) == (
        "crl.generated",
        "etcd-ca",
        published.number,
    )


def test_crl_numbers_increase_per_authority(world: World) -> None:
    assert [world.core.crls.publish("etcd-ca").number for _ in range(3)] == [1, 2, 3]
    assert world.core.crls.publish("kubernetes-ca").number == 1
    with world.store.unit(read_only=True) as unit:
        assert unit.crl_numbers.current("etcd-ca") == 3


def test_a_crl_lists_every_revocation_of_its_ca_with_its_reason(world: World) -> None:
    compromised = issue(world, "etcd-healthcheck-client", force_new=True)
    superseded = issue(world, "etcd-healthcheck-client", force_new=True)
    elsewhere = issue(world, "admin")
    for issued, reason in (
        (compromised, "key_compromise"),
        (superseded, "unspecified"),
        (elsewhere, "superseded"),
    ):
        world.core.inventory.revoke(CALLER, issued.serial_hex, reason)
    crl = x509.load_der_x509_crl(world.core.crls.publish("etcd-ca").der)
    listed = {entry.serial_number: entry for entry in crl}
    assert set(listed) == {
        compromised.certificate.serial_number,
        superseded.certificate.serial_number,
    }
    reason = listed[compromised.certificate.serial_number].extensions.get_extension_for_class(
        x509.CRLReason
    )
    assert reason.value.reason is x509.ReasonFlags.key_compromise
    # RFC 5280 5.3.1: "unspecified" is left out rather than said.
    assert not list(listed[superseded.certificate.serial_number].extensions)


def test_a_higher_crl_number_never_lists_fewer_revocations(world: World) -> None:
    # The number and the revocations it lists are read in one transaction.
    issued = [issue(world, "etcd-healthcheck-client", force_new=True) for _ in range(3)]
    numbers_and_counts = []
    for certificate in issued:
        _, published = world.core.inventory.revoke(CALLER, certificate.serial_hex, "superseded")
        numbers_and_counts.append((published.number, len(x509.load_der_x509_crl(published.der))))
    assert numbers_and_counts == [(1, 1), (2, 2), (3, 3)]


def test_a_crl_never_replaces_a_newer_one_on_disk(world: World) -> None:
    publisher = world.core.crls
    first = publisher.publish("etcd-ca")
    second = publisher.publish("etcd-ca")
    assert second.number > first.number
    # A slower worker's older CRL arrives last: it must not win.
    publisher._write_if_newer(publisher.path("etcd-ca"), first.der, first.number)
    assert number_of(publisher.path("etcd-ca").read_bytes()) == second.number


def test_a_crl_behind_the_databases_number_is_republished(world: World) -> None:
    publisher = world.core.crls
    published = publisher.publish("etcd-ca")
    with world.store.unit() as unit:
        unit.crl_numbers.next("etcd-ca")  # a publish that allocated a number and never wrote
    assert publisher.current("etcd-ca").number > published.number + 1


def test_the_current_crl_is_the_one_on_disk_until_half_its_validity_is_gone(
    make_world: WorldFactory,
) -> None:
    clock = Clock(datetime.now(UTC).replace(microsecond=0))
    world = make_world(clock=clock)
    first = world.core.crls.current("etcd-ca")  # none on disk yet: published
    clock.advance(DEFAULT_VALIDITY / 2 - timedelta(minutes=1))
    assert world.core.crls.current("etcd-ca").number == first.number
    clock.advance(timedelta(minutes=2))
    assert world.core.crls.current("etcd-ca").number == first.number + 1


def test_a_crl_file_that_is_not_a_crl_is_replaced(world: World) -> None:
    publisher = world.core.crls
    publisher.publish("etcd-ca")
    publisher.path("etcd-ca").write_bytes(b"not a CRL")
    assert publisher.current("etcd-ca").number == 2
    assert number_of(publisher.path("etcd-ca").read_bytes()) == 2


def test_refresh_publishes_every_cas_crl_the_services_too(world: World) -> None:
    # The service CA's CRL lists revoked operator credentials (issue 10, defect 4).
    world.core.crls.refresh_all()
    for name in ("kubernetes-ca", "etcd-ca", "front-proxy-ca", "kubeca-service-ca"):
        assert number_of(world.core.crls.path(name).read_bytes()) == 1


def test_an_unknown_ca_has_no_crl(world: World) -> None:
    with pytest.raises(NotFound, match="evil-ca"):
        world.core.crls.current("evil-ca")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "unspecified"),
        ("Key-Compromise", "key_compromise"),
        (" superseded ", "superseded"),
        ("cessation_of_operation", "cessation_of_operation"),
        # RFC 5280 and openssl's camel case, in any letter case.
        ("keyCompromise", "key_compromise"),
        ("cACompromise", "ca_compromise"),
        ("CACOMPROMISE", "ca_compromise"),
        ("affiliationChanged", "affiliation_changed"),
        ("cessationOfOperation", "cessation_of_operation"),
        ("certificateHold", "certificate_hold"),
        ("privilegewithdrawn", "privilege_withdrawn"),
    ],
)
def test_revocation_reasons_are_parsed_leniently(text: str, reason: str) -> None:
    assert parse_reason(text) == reason


def test_an_unknown_revocation_reason_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(InvalidArgument, match=r"unknown revocation reason 'because'.*superseded"):
        parse_reason("because")


def test_every_accepted_reason_has_its_own_crl_reason_code() -> None:
    assert set(CODES) == set(ACCEPTED)
    assert len(set(CODES.values())) == len(CODES)
    assert CODES["ca_compromise"] is x509.ReasonFlags.ca_compromise
