"""The issuance pipeline for every profile: the certificate kubeadm would make, signed by
the right CA, recorded before it is returned."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from kubeca_client.errors import FailedPrecondition, InvalidArgument
from kubeca_server.profiles import PROFILES

from tests.unit.conftest import CALLER, CASet, Clock, World, WorldFactory, inventory
from tests.unit.conftest import issue as issue_in
from tests.unit.helpers import (
    ADVERTISE,
    APISERVER_DNS,
    KUBEADM,
    NODE,
    NODE_PARAMS,
    PROFILE_PARAMS,
    cert_sans,
    ips,
    make_csr,
    rsa_key,
    subject_attributes,
)
from tests.unit.helpers import subject as name


def issue(
    world: World,
    profile: str,
    params: dict[str, str] | None = None,
    csr: bytes | None = None,
    lifetime: timedelta | None = None,
) -> x509.Certificate:
    return issue_in(world, profile, params, csr, lifetime).certificate


@pytest.fixture
def full_world(make_world: WorldFactory) -> World:
    return make_world(enable_super_admin=True)


def test_there_are_fourteen_profiles_and_kubeadm_knows_each() -> None:
    assert sorted(PROFILES) == sorted(KUBEADM)
    assert len(PROFILES) == 14


@pytest.mark.parametrize("profile", sorted(KUBEADM))
def test_profile_subject_is_kubeadms(full_world: World, profile: str) -> None:
    _, cn, orgs, _, _ = KUBEADM[profile]
    certificate = issue(full_world, profile)
    assert subject_attributes(certificate.subject) == subject_attributes(name(cn, *orgs))


@pytest.mark.parametrize("profile", sorted(KUBEADM))
def test_profile_is_signed_by_its_ca(full_world: World, ca_set: CASet, profile: str) -> None:
    ca = ca_set.authorities[KUBEADM[profile][0]].issuing
    certificate = issue(full_world, profile)
    assert certificate.issuer == ca.certificate.subject
    certificate.verify_directly_issued_by(ca.certificate)


@pytest.mark.parametrize("profile", sorted(KUBEADM))
def test_profile_extended_key_usage(full_world: World, profile: str) -> None:
    certificate = issue(full_world, profile)
    eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert list(eku.value) == list(KUBEADM[profile][3])


@pytest.mark.parametrize("profile", sorted(KUBEADM))
def test_profile_subject_alternative_names(full_world: World, profile: str) -> None:
    certificate = issue(full_world, profile)
    assert cert_sans(certificate) == KUBEADM[profile][4]


@pytest.mark.parametrize("profile", sorted(KUBEADM))
def test_profile_is_not_a_ca(full_world: World, profile: str) -> None:
    extension = issue(full_world, profile).extensions.get_extension_for_class(x509.BasicConstraints)
    assert extension.critical
    assert extension.value.ca is False
    assert extension.value.path_length is None


@pytest.mark.parametrize("profile", sorted(KUBEADM))
def test_profile_key_identifiers_chain_to_the_ca(
    full_world: World, ca_set: CASet, profile: str
) -> None:
    ca_certificate = ca_set.authorities[KUBEADM[profile][0]].issuing.certificate
    certificate = issue(full_world, profile)
    ski = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(certificate.public_key())
    aki = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca_certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest


@pytest.mark.parametrize("profile", sorted(KUBEADM))
def test_profile_default_validity_is_a_year_backdated_five_minutes(
    make_world: WorldFactory, profile: str
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    certificate = issue(make_world(enable_super_admin=True, clock=lambda: now), profile)
    assert certificate.not_valid_before_utc == now - timedelta(minutes=5)
    assert certificate.not_valid_after_utc == now + timedelta(days=365)


def key_usage(certificate: x509.Certificate) -> x509.Extension[x509.KeyUsage]:
    return certificate.extensions.get_extension_for_class(x509.KeyUsage)


def test_ecdsa_leaf_key_usage_is_digital_signature_only(world: World) -> None:
    extension = key_usage(issue(world, "admin"))
    assert extension.critical
    usage = extension.value
    assert usage.digital_signature
    assert not usage.key_encipherment
    assert not (usage.key_cert_sign or usage.crl_sign or usage.content_commitment)
    assert not (usage.data_encipherment or usage.key_agreement)


def test_rsa_leaf_key_usage_adds_key_encipherment(world: World) -> None:
    extension = key_usage(issue(world, "admin", csr=make_csr(rsa_key())))
    assert extension.critical
    usage = extension.value
    assert usage.digital_signature
    assert usage.key_encipherment
    assert not (usage.key_cert_sign or usage.crl_sign or usage.content_commitment)
    assert not (usage.data_encipherment or usage.key_agreement)


def test_issued_certificate_carries_the_csr_public_key(world: World) -> None:
    key = rsa_key()
    certificate = issue(world, "scheduler", csr=make_csr(key, der=True))
    assert certificate.public_key() == key.public_key()


# --- SANs -----------------------------------------------------------------------


def test_apiserver_sans_include_endpoint_host_and_extra_sans(world: World) -> None:
    params = dict(
        NODE_PARAMS,
        control_plane_endpoint="api.cluster.example:6443",
        extra_sans="10.0.0.50,lb.example.org,*.apps.example.org",
    )
    certificate = issue(world, "apiserver", params)
    assert cert_sans(certificate) == (
        APISERVER_DNS | {"api.cluster.example", "lb.example.org", "*.apps.example.org"},
        ips("10.96.0.1", ADVERTISE, "10.0.0.50"),
    )


def test_apiserver_endpoint_ip_becomes_an_ip_san(world: World) -> None:
    params = dict(NODE_PARAMS, control_plane_endpoint="[fd00::10]:6443")
    sans = cert_sans(issue(world, "apiserver", params))
    assert sans == (APISERVER_DNS, ips("10.96.0.1", ADVERTISE, "fd00::10"))


def test_apiserver_custom_service_cidr_and_dns_domain(world: World) -> None:
    params = dict(NODE_PARAMS, service_cidr="10.100.0.0/16", dns_domain="corp.internal")
    sans = cert_sans(issue(world, "apiserver", params))
    dns = (APISERVER_DNS - {"kubernetes.default.svc.cluster.local"}) | {
        "kubernetes.default.svc.corp.internal"
    }
    assert sans == (dns, ips("10.100.0.1", ADVERTISE))


def test_apiserver_ipv6_service_cidr_uses_its_first_address(world: World) -> None:
    params = dict(NODE_PARAMS, service_cidr="fd00:10:96::/108")
    sans = cert_sans(issue(world, "apiserver", params))
    assert sans is not None
    assert sans[1] == ips("fd00:10:96::1", ADVERTISE)


def test_apiserver_sans_are_deduplicated_and_dns_sorted(world: World) -> None:
    params = dict(
        NODE_PARAMS,
        control_plane_endpoint=ADVERTISE,
        extra_sans=f"kubernetes,{NODE},{ADVERTISE},10.96.0.1,b.example,a.example",
    )
    certificate = issue(world, "apiserver", params)
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = san.get_values_for_type(x509.DNSName)
    addresses = san.get_values_for_type(x509.IPAddress)
    assert dns == sorted(APISERVER_DNS | {"a.example", "b.example"})
    assert sorted(map(str, addresses)) == sorted(["10.96.0.1", ADVERTISE])


@pytest.mark.parametrize("profile", ["etcd-server", "etcd-peer"])
def test_etcd_extra_sans_are_added(world: World, profile: str) -> None:
    params = dict(NODE_PARAMS, extra_sans="etcd.example.org,10.1.2.3")
    sans = cert_sans(issue(world, profile, params))
    assert sans == (
        {NODE, "localhost", "etcd.example.org"},
        ips(ADVERTISE, "127.0.0.1", "::1", "10.1.2.3"),
    )


def test_kubelet_serving_without_advertise_address_has_only_the_node_name(
    world: World,
) -> None:
    sans = cert_sans(issue(world, "kubelet-serving", {"node_name": NODE}))
    assert sans == ({NODE}, set())


# --- validity ----------------------------------------------------------------------


def test_not_after_is_capped_at_a_short_lived_cas_not_after(
    make_world: WorldFactory, short_ca_set: CASet
) -> None:
    certificate = issue(make_world(cas=short_ca_set), "admin")
    ca = short_ca_set.authorities["kubernetes-ca"].issuing.certificate
    assert certificate.not_valid_after_utc == ca.not_valid_after_utc
    certificate.verify_directly_issued_by(ca)


def test_not_after_is_capped_when_the_ca_expires_within_the_lifetime(
    make_world: WorldFactory, ca_set: CASet
) -> None:
    ca = ca_set.authorities["etcd-ca"].issuing.certificate
    now = ca.not_valid_after_utc - timedelta(days=30)
    certificate = issue(make_world(clock=lambda: now), "etcd-server")
    assert certificate.not_valid_before_utc == now - timedelta(minutes=5)
    assert certificate.not_valid_after_utc == ca.not_valid_after_utc


def test_requested_lifetime_is_honoured(make_world: WorldFactory) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    world = make_world(clock=lambda: now)
    certificate = issue(world, "kube-proxy", lifetime=timedelta(hours=12))
    assert certificate.not_valid_after_utc == now + timedelta(hours=12)


@pytest.mark.parametrize("lifetime", [timedelta(minutes=10), timedelta(days=365)])
def test_lifetime_bounds_are_inclusive(make_world: WorldFactory, lifetime: timedelta) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    certificate = issue(make_world(clock=lambda: now), "scheduler", lifetime=lifetime)
    assert certificate.not_valid_after_utc == now + lifetime


# --- serials -----------------------------------------------------------------------


def test_serials_are_positive_random_and_at_most_20_octets(world: World) -> None:
    # force_new: the same request again would get the same certificate back.
    serials = [
        issue_in(world, "kube-proxy", force_new=True).certificate.serial_number for _ in range(12)
    ]
    assert len(set(serials)) == len(serials)
    assert all(s > 0 for s in serials)
    # DER INTEGER content, sign octet included, must fit in 20 octets (RFC 5280 4.1.2.2).
    assert all(s.bit_length() // 8 + 1 <= 20 for s in serials)
    # >= 64 bits of entropy: a uniformly random serial of 64+ bits is almost never short.
    assert sum(s.bit_length() > 100 for s in serials) >= 10


def test_audit_record_names_the_issued_serial_and_fingerprint(world: World) -> None:
    issued = issue_in(world, "admin")
    (record,) = world.records()
    assert record["event"] == "certificate.issued"
    assert record["serial"] == format(issued.certificate.serial_number, "x")
    assert record["fingerprint_sha256"] == issued.fingerprint_sha256
    assert record["authority"] == "kubernetes-ca"
    assert record["subject"] == "CN=kubernetes-admin,O=kubeadm:cluster-admins"
    assert record["caller"] == CALLER.identity
    assert record["generation"] == 1


def test_the_inventory_row_is_the_certificate_returned(world: World) -> None:
    issued = issue_in(world, "etcd-server")
    (row,) = inventory(world.store)
    assert (row.serial, row.certificate_pem) == (issued.serial_hex, issued.certificate_pem)
    assert (row.authority, row.profile, row.caller) == ("etcd-ca", "etcd-server", CALLER.identity)
    assert row.issuer_key_id == issued.generation.key_id_hex
    assert row.audit_seq == world.records()[0]["seq"]


# --- dual-stack service networks and an expired CA -----------------------------------


def test_apiserver_dual_stack_service_cidr_uses_the_first_network(world: World) -> None:
    params = dict(PROFILE_PARAMS["apiserver"], service_cidr="10.100.0.0/16,fd00:10:96::/108")
    certificate = issue(world, "apiserver", params)
    sans = cert_sans(certificate)
    assert sans is not None
    assert ipaddress.ip_address("10.100.0.1") in sans[1]
    assert ipaddress.ip_address("fd00:10:96::1") not in sans[1]


def test_apiserver_refuses_more_than_two_service_networks(world: World) -> None:
    params = dict(PROFILE_PARAMS["apiserver"], service_cidr="10.1.0.0/16,10.2.0.0/16,fd00::/108")
    with pytest.raises(InvalidArgument, match="at most two networks"):
        issue(world, "apiserver", params)


def test_an_expired_ca_is_a_failed_precondition_not_an_outage(
    make_world: WorldFactory, ca_set: CASet
) -> None:
    # Retrying will not help: an operator must rotate the CA. So not UNAVAILABLE.
    clock = Clock()
    world = make_world(clock=clock)
    expired_at = ca_set.authorities["kubernetes-ca"].issuing.certificate.not_valid_after_utc
    clock.now = expired_at + timedelta(seconds=1)
    with pytest.raises(FailedPrecondition, match="kubernetes-ca expired") as caught:
        issue(world, "admin")
    assert type(caught.value) is FailedPrecondition
    assert "rotate" in caught.value.message
    # What the pipeline learned rides on the error, for the API layer's refusal record;
    # the pipeline itself records nothing and issues nothing.
    assert {"requested_subject", "public_key_sha256", "request_fingerprint"} <= set(
        caught.value.context
    )
    assert world.records() == []
    assert inventory(world.store) == []
