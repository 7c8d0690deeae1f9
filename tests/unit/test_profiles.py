"""profiles.py as pure functions: parameters, subjects, SAN rules, validity and templates."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from kubeca_client.authorities import COMMON_NAMES
from kubeca_client.errors import InvalidArgument
from kubeca_client.parameters import PARSERS
from kubeca_server.profiles import (
    PROFILES,
    Inputs,
    Issuer,
    build_ca,
    build_leaf,
    parse_inputs,
    validity,
)

from tests.unit.helpers import KUBEADM, PROFILE_PARAMS, p256_key, subject

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def issuer(not_after: datetime) -> Issuer:
    key_id = x509.SubjectKeyIdentifier.from_public_key(p256_key().public_key()).digest
    return Issuer(subject("kubernetes"), key_id, not_after)


@pytest.mark.parametrize("profile", sorted(KUBEADM))
def test_profile_data_matches_kubeadm(profile: str) -> None:
    authority, _, orgs, eku, _ = KUBEADM[profile]
    p = PROFILES[profile]
    assert p.authority == authority
    assert p.organizations == orgs
    assert p.extended_key_usages == eku


def test_only_super_admin_grants_system_masters() -> None:
    granting = [p.name for p in PROFILES.values() if p.grants_system_masters]
    assert granting == ["super-admin"]


def test_node_profiles_require_node_name() -> None:
    needing = sorted(
        p.name for p in PROFILES.values() if "node_name" in {q.name for q in p.required}
    )
    assert needing == sorted(PROFILE_PARAMS)


def test_parse_inputs_applies_defaults() -> None:
    inputs = parse_inputs(
        PROFILES["apiserver"], {"node_name": "n", "advertise_address": "10.0.0.1"}
    )
    assert inputs.service_cidr == ipaddress.ip_network("10.96.0.0/12")
    assert inputs.dns_domain == "cluster.local"
    assert not inputs.extra_sans
    assert not inputs.control_plane_endpoint


def test_parse_inputs_strips_whitespace() -> None:
    inputs = parse_inputs(PROFILES["kubelet-client"], {"node_name": "  node-a \n"})
    assert inputs.node_name == "node-a"


def test_parse_inputs_treats_blank_optional_as_absent() -> None:
    inputs = parse_inputs(PROFILES["kubelet-serving"], {"node_name": "n", "advertise_address": " "})
    assert inputs.advertise_address is None


def test_parse_inputs_unknown_parameter_lists_what_the_profile_takes() -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_inputs(PROFILES["kubelet-client"], {"node_name": "n", "advertise_address": "1.2.3.4"})
    assert "'advertise_address'" in caught.value.message
    assert "it takes: node_name" in caught.value.message


def test_parse_inputs_profile_without_parameters_says_so() -> None:
    with pytest.raises(InvalidArgument, match="no parameters"):
        parse_inputs(PROFILES["admin"], {"node_name": "n"})


def test_parse_inputs_missing_required_describes_it() -> None:
    with pytest.raises(InvalidArgument, match="needs parameter node_name"):
        parse_inputs(PROFILES["etcd-peer"], {"advertise_address": "10.0.0.1"})


def test_subject_formats_the_node_name() -> None:
    name = PROFILES["kubelet-client"].subject(Inputs(node_name="w-3"))
    assert name.rfc4514_string() == "CN=system:node:w-3,O=system:nodes"


def test_validity_backdates_five_minutes() -> None:
    not_before, not_after = validity(NOW, timedelta(days=1), issuer(NOW + timedelta(days=10)))
    assert not_before == NOW - timedelta(minutes=5)
    assert not_after == NOW + timedelta(days=1)


def test_validity_never_exceeds_the_issuer() -> None:
    ca_not_after = NOW + timedelta(hours=3)
    _, not_after = validity(NOW, timedelta(days=365), issuer(ca_not_after))
    assert not_after == ca_not_after


def test_build_leaf_has_exactly_the_expected_extensions() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = build_leaf(
        PROFILES["etcd-server"],
        parse_inputs(PROFILES["etcd-server"], {"node_name": "e1", "advertise_address": "10.0.0.9"}),
        key.public_key(),
        issuer(NOW + timedelta(days=3650)),
        12345,
        NOW,
        timedelta(days=365),
    )
    certificate = builder.sign(p256_key(), hashes.SHA256())
    classes = {type(e.value) for e in certificate.extensions}
    assert classes == {
        x509.BasicConstraints,
        x509.KeyUsage,
        x509.ExtendedKeyUsage,
        x509.SubjectKeyIdentifier,
        x509.AuthorityKeyIdentifier,
        x509.SubjectAlternativeName,
    }
    assert certificate.serial_number == 12345


def test_build_ca_is_a_ca_with_cert_and_crl_sign() -> None:
    key = p256_key()
    certificate = build_ca("etcd-ca", key.public_key(), 7, NOW, timedelta(days=3650)).sign(
        key, hashes.SHA256()
    )
    constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    usage = certificate.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    assert not usage.value.digital_signature
    assert certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert certificate.subject == certificate.issuer == subject("etcd-ca")
    assert certificate.not_valid_before_utc == NOW - timedelta(minutes=5)


def test_ca_common_names_are_kubeadms() -> None:
    assert dict(COMMON_NAMES) == {
        "kubernetes-ca": "kubernetes",
        "etcd-ca": "etcd-ca",
        "front-proxy-ca": "front-proxy-ca",
        "kubeca-service-ca": "kubeca-service-ca",
    }


def test_every_declared_parameter_has_a_parser_shared_with_the_client() -> None:
    declared = {p.name for profile in PROFILES.values() for p in profile.parameters}
    assert declared == set(PARSERS)
