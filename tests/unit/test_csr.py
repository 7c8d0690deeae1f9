"""csr.py: the untrusted CSR, parsed, its proof of possession checked, its key held to policy."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448
from cryptography.hazmat.primitives.serialization import Encoding
from kubeca_client.errors import InvalidArgument
from kubeca_client.names import SubjectAltNames
from kubeca_server.csr import (
    MAX_CSR_BYTES,
    check_requested_sans,
    check_requested_subject,
    leaf_public_key,
    parse_csr,
    requested_sans,
)
from kubeca_server.profiles import build_ca

from tests.unit.helpers import dns_sans, ip_sans, make_csr, p256_key, rsa_key, subject


def load(data: bytes) -> x509.CertificateSigningRequest:
    return parse_csr(data)


def test_parse_csr_accepts_pem_and_der() -> None:
    assert parse_csr(make_csr()).public_key() == p256_key().public_key()
    assert parse_csr(make_csr(der=True)).public_key() == p256_key().public_key()


def test_parse_csr_accepts_pem_with_surrounding_whitespace() -> None:
    assert parse_csr(b"\n  " + make_csr() + b"\n\n")


def test_parse_csr_size_limit_is_inclusive() -> None:
    padded = make_csr() + b"\n" * 100
    assert len(padded) < MAX_CSR_BYTES
    parse_csr(padded)
    with pytest.raises(InvalidArgument, match="bytes"):
        parse_csr(b"x" * (MAX_CSR_BYTES + 1))


def test_parse_csr_refuses_a_certificate() -> None:
    now = datetime.now(UTC)
    key = p256_key()
    certificate = build_ca("x", key.public_key(), 1, now, timedelta(days=1)).sign(
        key, hashes.SHA256()
    )
    for encoding in (Encoding.DER, Encoding.PEM):
        with pytest.raises(InvalidArgument, match="PKCS#10"):
            parse_csr(certificate.public_bytes(encoding))


def test_parse_csr_refuses_a_flipped_signature_bit() -> None:
    der = bytearray(make_csr(der=True))
    der[-1] ^= 0x80
    with pytest.raises(InvalidArgument, match="signature does not verify"):
        parse_csr(bytes(der))


def test_parse_csr_refuses_a_tampered_subject() -> None:
    der = make_csr(name=subject("kubernetes-admin"), der=True)
    tampered = der.replace(b"kubernetes-admin", b"kubernetes-admio")
    assert tampered != der
    with pytest.raises(InvalidArgument, match="signature does not verify"):
        parse_csr(tampered)


@pytest.mark.parametrize("bits", [2048, 3072])
def test_leaf_public_key_accepts_rsa(bits: int) -> None:
    key = rsa_key(bits)
    assert leaf_public_key(load(make_csr(key))) == key.public_key()


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1()])
def test_leaf_public_key_accepts_p256_and_p384(curve: ec.EllipticCurve) -> None:
    key = ec.generate_private_key(curve)
    assert leaf_public_key(load(make_csr(key))) == key.public_key()


@pytest.mark.parametrize(
    ("curve", "name"),
    [(ec.SECP521R1(), "secp521r1"), (ec.SECP256K1(), "secp256k1"), (ec.SECP224R1(), "secp224r1")],
)
def test_leaf_public_key_refuses_other_curves(curve: ec.EllipticCurve, name: str) -> None:
    csr = load(make_csr(ec.generate_private_key(curve)))
    with pytest.raises(InvalidArgument, match=f"curve {name} refused"):
        leaf_public_key(csr)


def test_leaf_public_key_refuses_small_rsa() -> None:
    with pytest.raises(InvalidArgument, match="RSA key of 1024 bits refused"):
        leaf_public_key(load(make_csr(rsa_key(1024))))


def test_leaf_public_key_refuses_exponent_3() -> None:
    with pytest.raises(InvalidArgument, match="exponent"):
        leaf_public_key(load(make_csr(rsa_key(2048, 3))))


def test_leaf_public_key_refuses_ed448() -> None:
    with pytest.raises(InvalidArgument, match="Ed448"):
        leaf_public_key(load(make_csr(ed448.Ed448PrivateKey.generate())))


# --- subject ------------------------------------------------------------------------------

ADMIN = subject("kubernetes-admin", "kubeadm:cluster-admins")


def test_empty_subject_lets_the_profile_decide() -> None:
    check_requested_subject(load(make_csr()), ADMIN)


def test_exact_subject_is_accepted_in_any_attribute_order() -> None:
    reordered = x509.Name(list(reversed(list(ADMIN))))
    check_requested_subject(load(make_csr(name=reordered)), ADMIN)


@pytest.mark.parametrize(
    "requested",
    [
        subject("kubernetes-admin", "system:masters"),
        subject("kubernetes-admin", "kubeadm:cluster-admins", "system:masters"),
        subject("kubernetes-admin"),
        subject(None, "kubeadm:cluster-admins"),
        subject("kubernetes-admin ", "kubeadm:cluster-admins"),
        subject("Kubernetes-Admin", "kubeadm:cluster-admins"),
        x509.Name(
            [
                *ADMIN,
                x509.NameAttribute(x509.oid.NameOID.ORGANIZATIONAL_UNIT_NAME, "x"),
            ]
        ),
    ],
)
def test_any_other_subject_is_refused(requested: x509.Name) -> None:
    with pytest.raises(InvalidArgument, match="does not match what this profile issues"):
        check_requested_subject(load(make_csr(name=requested)), ADMIN)


# --- SANs ---------------------------------------------------------------------------------

COMPUTED = SubjectAltNames.of(
    ["cp-1", "kubernetes"], [ipaddress.ip_address("10.96.0.1"), ipaddress.ip_address("::1")]
)


def test_csr_without_sans_asks_for_none() -> None:
    assert requested_sans(load(make_csr())) is None
    check_requested_sans(load(make_csr()), COMPUTED)


def test_requested_sans_reads_dns_and_ip() -> None:
    csr = load(make_csr(sans=dns_sans("b", "a") + ip_sans("::1")))
    assert requested_sans(csr) == SubjectAltNames(("a", "b"), (ipaddress.ip_address("::1"),))


def test_subset_of_computed_sans_is_accepted() -> None:
    check_requested_sans(load(make_csr(sans=dns_sans("kubernetes") + ip_sans("::1"))), COMPUTED)


def test_sans_beyond_the_computed_ones_are_named() -> None:
    csr = load(make_csr(sans=dns_sans("kubernetes", "evil.example") + ip_sans("10.0.0.66")))
    with pytest.raises(InvalidArgument) as caught:
        check_requested_sans(csr, COMPUTED)
    assert "evil.example" in caught.value.message
    assert "10.0.0.66" in caught.value.message
    assert "kubernetes," not in caught.value.message


def test_ip_san_given_as_a_network_is_refused() -> None:
    csr = load(make_csr(sans=[x509.IPAddress(ipaddress.ip_network("10.0.0.0/8"))]))
    with pytest.raises(InvalidArgument, match="DNS and IP SANs only"):
        requested_sans(csr)


@pytest.mark.parametrize(
    "san",
    [
        x509.RFC822Name("root@example.com"),
        x509.UniformResourceIdentifier("https://example.com"),
        x509.DirectoryName(subject("x")),
        x509.RegisteredID(x509.ObjectIdentifier("1.2.3.4")),
    ],
)
def test_other_san_types_are_refused(san: x509.GeneralName) -> None:
    with pytest.raises(InvalidArgument, match=f"a {type(san).__name__} SAN"):
        check_requested_sans(load(make_csr(sans=[san])), COMPUTED)
