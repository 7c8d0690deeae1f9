"""Hostile and malformed requests against the real server: refused, explained, audited.

Every request in this module must be refused: INVALID_ARGUMENT (NOT_FOUND for an unknown
name, PERMISSION_DENIED for super-admin), with a message that names the problem. Never
INTERNAL, never a traceback to the caller, never a certificate; and each refusal the
service decides is exactly one "certificate.refused" line in the audit log. Every test
checks that of its own requests (``nothing_issued``), so any one of them runs alone.

One case per rule runs here, end to end over mutual TLS; every other case of each rule
is a unit test (tests/unit/test_pipeline_refusals.py). What only the real server can
show stays here: the transport's message cap, requests that cannot be decoded, bounded
and sanitized messages and records, and the thin client's mapping of each status.

Most tests talk to the server through the raw generated stub, so nothing in the thin
client can soften what the server really answers.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kubeca_client._proto.kubeca.v1 import kubeca_pb2 as pb
from kubeca_client._proto.kubeca.v1 import kubeca_pb2_grpc as pb_grpc
from kubeca_client.client import Client
from kubeca_client.errors import InvalidArgument, NotFound, PermissionDenied

from tests.support import OPERATOR, RunningServer

pytestmark = pytest.mark.integration

TIMEOUT = 10.0
ISSUE_METHOD = "/kubeca.v1.CertificateAuthority/IssueCertificate"

SigningKey = (
    ec.EllipticCurvePrivateKey
    | rsa.RSAPrivateKey
    | dsa.DSAPrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)

# SPKI SHA-256 of every key whose CSR this module has sent; none may ever be certified.
SENT_KEYS: set[str] = set()


# --- building requests ---------------------------------------------------------------


def _spki_sha256(key: SigningKey) -> str:
    der = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def _csr(
    key: SigningKey,
    subject: x509.Name | None = None,
    sans: list[x509.GeneralName] | None = None,
    encoding: Encoding = Encoding.PEM,
) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject or x509.Name([]))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    digest = (
        None
        if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)
        else hashes.SHA256()
    )
    SENT_KEYS.add(_spki_sha256(key))
    return builder.sign(key, digest).public_bytes(encoding)


def _name(common_name: str, *organizations: str) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


# --- reading answers -----------------------------------------------------------------


def _audit_records(server: RunningServer) -> list[dict[str, Any]]:
    """Every certificate decision in the audit log, oldest first."""
    records = [json.loads(line) for line in server.audit_log.read_text().splitlines() if line]
    return [r for r in records if str(r.get("event", "")).startswith("certificate.")]


def _issued_records(server: RunningServer) -> list[dict[str, Any]]:
    return [r for r in _audit_records(server) if r["event"] == "certificate.issued"]


def _assert_safe_message(details: str) -> None:
    """A message for a person: no traceback, no source paths, no internal-error text."""
    assert details
    assert "Traceback" not in details
    assert 'File "' not in details
    assert ".py" not in details
    assert "site-packages" not in details
    assert "internal error" not in details.lower()
    assert len(details) < 2000, f"message is {len(details)} characters"


@dataclass(frozen=True)
class Refusal:
    code: grpc.StatusCode
    details: str
    # The audit records this one request added.
    records: list[dict[str, Any]]


def _refuse(
    stub: pb_grpc.CertificateAuthorityStub,
    server: RunningServer,
    request: pb.IssueCertificateRequest,
) -> Refusal:
    """Send ``request``; it must fail. What came back, and what the audit log gained."""
    before = len(_audit_records(server))
    with pytest.raises(grpc.RpcError) as info:
        stub.IssueCertificate(request, timeout=TIMEOUT)
    error: Any = info.value  # a grpc.Call as well as an RpcError
    details: str = error.details() or ""
    _assert_safe_message(details)
    return Refusal(error.code(), details, _audit_records(server)[before:])


def _assert_refused(
    refusal: Refusal,
    code: grpc.StatusCode,
    *fragments: str,
    profile: str,
    audited: bool = True,
) -> None:
    assert refusal.code == code, f"{refusal.code.name}: {refusal.details}"
    for fragment in fragments:
        assert fragment in refusal.details, f"{fragment!r} not in {refusal.details!r}"
    if not audited:
        return
    assert len(refusal.records) == 1, refusal.records
    record = refusal.records[0]
    assert record["event"] == "certificate.refused"
    assert record["outcome"] == "refused"
    assert record["status"] == code.name
    assert record["reason"] == refusal.details
    assert record["profile"] == profile[:64]
    assert record["caller"] == OPERATOR  # the identity of the client certificate
    assert "127.0.0.1" in record["peer"]


# --- fixtures ------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def nothing_issued(server: RunningServer) -> Iterator[None]:
    """What every test here must leave behind, checked on its own requests alone: no
    certificate, no refusal that was really an internal error, and no key this module
    ever sent certified (so no test depends on another having run first)."""
    before = len(_audit_records(server))
    yield
    added = _audit_records(server)[before:]
    assert not [r for r in added if r["event"] == "certificate.issued"], added
    assert all(r["outcome"] == "refused" for r in added), added
    assert not [r for r in added if r.get("status") == "INTERNAL"], added
    certified = {r.get("public_key_sha256") for r in _issued_records(server)} & SENT_KEYS
    assert not certified, f"keys from refused requests were certified: {certified}"


@pytest.fixture(scope="module")
def channel(server: RunningServer) -> Iterator[grpc.Channel]:
    with server.channel() as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.CertificateAuthorityStub:
    return pb_grpc.CertificateAuthorityStub(channel)


@pytest.fixture(scope="module")
def p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def good_csr(p256: ec.EllipticCurvePrivateKey) -> bytes:
    """A valid CSR with an empty subject: acceptable to any profile on its own."""
    return _csr(p256)


def _request(
    profile: str,
    csr: bytes,
    parameters: Mapping[str, str] | None = None,
    lifetime_seconds: int = 0,
) -> pb.IssueCertificateRequest:
    return pb.IssueCertificateRequest(
        profile=profile,
        csr=csr,
        parameters=dict(parameters or {}),
        lifetime_seconds=lifetime_seconds,
    )


# --- the CSR itself ------------------------------------------------------------------

NOT_A_CSR = "not a PKCS#10 certificate request"


def test_garbage_csr_is_invalid_argument(
    stub: pb_grpc.CertificateAuthorityStub, server: RunningServer
) -> None:
    # Empty, truncated, binary, a certificate...: the unit tests' REFUSALS.
    csr = b"hello, I am a certificate signing request"
    refusal = _refuse(stub, server, _request("admin", csr))
    _assert_refused(refusal, grpc.StatusCode.INVALID_ARGUMENT, NOT_A_CSR, profile="admin")


BAD_SIGNATURE = "csr signature does not verify"


def test_csr_with_a_flipped_signature_byte_is_invalid_argument(
    stub: pb_grpc.CertificateAuthorityStub, server: RunningServer
) -> None:
    # RSA, PEM, a signature by another key or of another CSR: the unit tests' REFUSALS.
    der = bytearray(_csr(ec.generate_private_key(ec.SECP256R1()), encoding=Encoding.DER))
    der[-1] ^= 0x01  # the last octet is inside the signature BIT STRING
    tampered = x509.load_der_x509_csr(bytes(der))  # still well-formed, just not valid
    assert not tampered.is_signature_valid
    refusal = _refuse(stub, server, _request("admin", tampered.public_bytes(Encoding.DER)))
    _assert_refused(refusal, grpc.StatusCode.INVALID_ARGUMENT, BAD_SIGNATURE, profile="admin")


def test_oversized_csr_below_the_message_cap_is_invalid_argument(
    stub: pb_grpc.CertificateAuthorityStub, server: RunningServer, good_csr: bytes
) -> None:
    padded = good_csr + b"\n" * (20 * 1024)  # 20 KiB: under the 64 KiB message cap
    refusal = _refuse(stub, server, _request("admin", padded))
    _assert_refused(
        refusal, grpc.StatusCode.INVALID_ARGUMENT, "csr is", "at most 16384", profile="admin"
    )


def test_request_over_the_message_cap_is_refused_by_grpc_and_issues_nothing(
    stub: pb_grpc.CertificateAuthorityStub, server: RunningServer
) -> None:
    huge = b"-----BEGIN CERTIFICATE REQUEST-----\n" + b"A" * (200 * 1024)
    issued_before = len(_issued_records(server))
    started = time.monotonic()
    refusal = _refuse(stub, server, _request("admin", huge))
    # The transport refuses it before the service sees it: RESOURCE_EXHAUSTED, which the
    # thin client reports as an invalid (too large) request. No decision, no audit record.
    _assert_refused(
        refusal,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "larger than max",
        str(64 * 1024),
        profile="admin",
        audited=False,
    )
    assert refusal.records == []
    assert time.monotonic() - started < 5
    assert len(_issued_records(server)) == issued_before
    # The same channel still works: the server and the connection survived.
    refusal = _refuse(stub, server, _request("admin", b"still here"))
    _assert_refused(refusal, grpc.StatusCode.INVALID_ARGUMENT, NOT_A_CSR, profile="admin")


def test_client_reports_a_request_over_the_message_cap_as_invalid_argument(
    client: Client,
) -> None:
    with pytest.raises(InvalidArgument, match="too large"):
        client.issue_certificate("admin", b"A" * (200 * 1024))


# --- the key in the CSR --------------------------------------------------------------


def test_disallowed_key_is_invalid_argument(
    stub: pb_grpc.CertificateAuthorityStub, server: RunningServer
) -> None:
    # Other curves, exponents, Ed25519, Ed448, DSA: the unit tests' REFUSALS.
    key = rsa.generate_private_key(65537, 1024)  # noqa: S505  weak on purpose
    refusal = _refuse(stub, server, _request("admin", _csr(key)))
    _assert_refused(refusal, grpc.StatusCode.INVALID_ARGUMENT, "1024 bits", "2048", profile="admin")
    # The CSR itself parsed and verified: the refusal is about the key alone.
    assert "requested_subject" in refusal.records[0]


# --- profiles and who may have them --------------------------------------------------


def test_unknown_profile_is_not_found_and_lists_the_known_ones(
    stub: pb_grpc.CertificateAuthorityStub, server: RunningServer, good_csr: bytes
) -> None:
    refusal = _refuse(stub, server, _request("kube-god", good_csr))
    _assert_refused(
        refusal,
        grpc.StatusCode.NOT_FOUND,
        "'kube-god'",
        "known profiles",
        "apiserver",
        "admin",
        "kubelet-serving",
        profile="kube-god",
    )


def test_huge_profile_name_is_not_found_with_a_bounded_message(
    stub: pb_grpc.CertificateAuthorityStub, server: RunningServer, good_csr: bytes
) -> None:
    name = "x" * 20_000
    refusal = _refuse(stub, server, _request(name, good_csr))
    _assert_refused(refusal, grpc.StatusCode.NOT_FOUND, "known profiles", profile=name)
    assert len(refusal.details) < 1000
    assert len(refusal.records[0]["profile"]) <= 64


def test_super_admin_is_permission_denied_when_not_enabled(
    stub: pb_grpc.CertificateAuthorityStub, server: RunningServer, good_csr: bytes
) -> None:
    refusal = _refuse(stub, server, _request("super-admin", good_csr))
    _assert_refused(
        refusal,
        grpc.StatusCode.PERMISSION_DENIED,
        "system:masters",
        "enable_super_admin",
        profile="super-admin",
    )


def test_system_masters_subject_sent_to_admin_is_invalid_argument(
    stub: pb_grpc.CertificateAuthorityStub,
    server: RunningServer,
    p256: ec.EllipticCurvePrivateKey,
) -> None:
    csr = _csr(p256, _name("kubernetes-admin", "system:masters"))
    refusal = _refuse(stub, server, _request("admin", csr))
    _assert_refused(
        refusal,
        grpc.StatusCode.INVALID_ARGUMENT,
        "O=system:masters",
        "does not match",
        "kubeadm:cluster-admins",
        profile="admin",
    )
    assert refusal.records[0]["requested_subject"] == "CN=kubernetes-admin,O=system:masters"


def test_san_the_profile_does_not_produce_is_invalid_argument(
    stub: pb_grpc.CertificateAuthorityStub,
    server: RunningServer,
    p256: ec.EllipticCurvePrivateKey,
) -> None:
    csr = _csr(p256, sans=[x509.DNSName("node-1"), x509.DNSName("evil.example.com")])
    refusal = _refuse(stub, server, _request("kubelet-serving", csr, {"node_name": "node-1"}))
    _assert_refused(
        refusal,
        grpc.StatusCode.INVALID_ARGUMENT,
        "evil.example.com",
        "would not issue",
        profile="kubelet-serving",
    )


# --- parameters ----------------------------------------------------------------------


def test_bad_parameter_is_invalid_argument_naming_it(
    stub: pb_grpc.CertificateAuthorityStub, server: RunningServer, good_csr: bytes
) -> None:
    # Missing, blank, too long, not an address, bad CIDRs, ports, domains, unknown or
    # unexpected names: the unit tests' REFUSALS.
    request = _request("kubelet-client", good_csr, {"node_name": "Node_1"})
    refusal = _refuse(stub, server, request)
    _assert_refused(
        refusal,
        grpc.StatusCode.INVALID_ARGUMENT,
        "node_name",
        "'Node_1'",
        "DNS-1123",
        profile="kubelet-client",
    )


def test_control_characters_in_a_parameter_are_not_echoed_raw(
    stub: pb_grpc.CertificateAuthorityStub, server: RunningServer, good_csr: bytes
) -> None:
    hostile = "node-1\n\x00\x1b[31mINJECTED\r"
    refusal = _refuse(stub, server, _request("kubelet-client", good_csr, {"node_name": hostile}))
    _assert_refused(
        refusal, grpc.StatusCode.INVALID_ARGUMENT, "node_name", "DNS-1123", profile="kubelet-client"
    )
    for raw in ("\n", "\x00", "\x1b", "\r"):
        assert raw not in refusal.details


def test_huge_parameter_value_is_invalid_argument(
    stub: pb_grpc.CertificateAuthorityStub, server: RunningServer, good_csr: bytes
) -> None:
    value = "a" * 10_000
    refusal = _refuse(stub, server, _request("kubelet-client", good_csr, {"node_name": value}))
    _assert_refused(
        refusal,
        grpc.StatusCode.INVALID_ARGUMENT,
        "node_name",
        "longer than 4096",
        profile="kubelet-client",
    )
    assert value not in refusal.details
    assert len(refusal.records[0]["parameters"]["node_name"]) <= 256


def test_many_parameters_are_invalid_argument(
    stub: pb_grpc.CertificateAuthorityStub, server: RunningServer, good_csr: bytes
) -> None:
    parameters = {f"p{i}": "x" for i in range(1000)}
    refusal = _refuse(stub, server, _request("kubelet-client", good_csr, parameters))
    _assert_refused(
        refusal, grpc.StatusCode.INVALID_ARGUMENT, "at most 32", profile="kubelet-client"
    )
    assert len(refusal.records[0]["parameters"]) <= 64


# --- lifetimes -----------------------------------------------------------------------


def test_the_most_negative_lifetime_is_invalid_argument(
    stub: pb_grpc.CertificateAuthorityStub, server: RunningServer, good_csr: bytes
) -> None:
    # Below the minimum, zero, negative, past the maximum: the unit tests' REFUSALS. Here
    # what only the wire can send: an int64 that no duration type holds.
    refusal = _refuse(stub, server, _request("admin", good_csr, lifetime_seconds=-(2**63)))
    _assert_refused(refusal, grpc.StatusCode.INVALID_ARGUMENT, "lifetime", profile="admin")


@pytest.mark.parametrize("lifetime_seconds", [2**62, 2**63 - 1], ids=["2^62", "int64-max"])
def test_absurdly_long_lifetime_is_invalid_argument_saying_it_is_too_long(
    stub: pb_grpc.CertificateAuthorityStub,
    server: RunningServer,
    good_csr: bytes,
    lifetime_seconds: int,
) -> None:
    request = _request("admin", good_csr, lifetime_seconds=lifetime_seconds)
    refusal = _refuse(stub, server, request)
    _assert_refused(refusal, grpc.StatusCode.INVALID_ARGUMENT, "lifetime", profile="admin")
    # The value is positive; the problem is that it is too long, and the message must say so.
    assert "maximum" in refusal.details or "too long" in refusal.details, refusal.details


def test_lifetime_refusal_is_audited(
    stub: pb_grpc.CertificateAuthorityStub, server: RunningServer, good_csr: bytes
) -> None:
    refusal = _refuse(stub, server, _request("admin", good_csr, lifetime_seconds=60))
    _assert_refused(
        refusal, grpc.StatusCode.INVALID_ARGUMENT, "lifetime", "below the minimum", profile="admin"
    )


# --- requests the server cannot even decode -----------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"\x0a\x04\xff\xfe\xfd\xfc\x12\x03abc", id="profile-not-utf8"),
        pytest.param(b"\xff\xff\xff\xff\xff", id="not-protobuf"),
        pytest.param(b"\x12\xff\xff\xff\x0f", id="length-past-the-end"),
    ],
)
def test_undecodable_request_is_invalid_argument_not_internal(
    channel: grpc.Channel, server: RunningServer, body: bytes
) -> None:
    # Raw bytes on the wire, as a hostile client could send them.
    issue = channel.unary_unary(ISSUE_METHOD)
    issued_before = len(_issued_records(server))
    with pytest.raises(grpc.RpcError) as info:
        issue(body, timeout=TIMEOUT)
    error: Any = info.value
    _assert_safe_message(error.details() or "")
    assert len(_issued_records(server)) == issued_before
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (
        f"{error.code().name}: {error.details()}"
    )


# --- the read-only calls -------------------------------------------------------------


def test_unknown_authority_is_not_found_and_lists_the_known_ones(
    stub: pb_grpc.CertificateAuthorityStub,
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.GetCACertificates(pb.GetCACertificatesRequest(authority="evil-ca"), timeout=TIMEOUT)
    error: Any = info.value
    details: str = error.details()
    _assert_safe_message(details)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    for fragment in ("'evil-ca'", "kubernetes-ca", "etcd-ca", "front-proxy-ca"):
        assert fragment in details


def test_huge_authority_name_is_not_found_with_a_bounded_message(
    stub: pb_grpc.CertificateAuthorityStub,
) -> None:
    request = pb.GetCACertificatesRequest(authority="\x1b[2J" + "y" * 30_000)
    with pytest.raises(grpc.RpcError) as info:
        stub.GetCACertificates(request, timeout=TIMEOUT)
    error: Any = info.value
    _assert_safe_message(error.details())
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert len(error.details()) < 1000
    assert "\x1b" not in error.details()


# --- the same refusals through the thin client ---------------------------------------


def test_client_raises_not_found_for_an_unknown_profile(client: Client, good_csr: bytes) -> None:
    with pytest.raises(NotFound, match="no profile named 'kube-god'"):
        client.issue_certificate("kube-god", good_csr)


def test_client_raises_not_found_for_an_unknown_authority(client: Client) -> None:
    with pytest.raises(NotFound, match="no certificate authority named 'evil-ca'"):
        client.ca_certificates("evil-ca")


def test_client_raises_permission_denied_for_super_admin(client: Client, good_csr: bytes) -> None:
    with pytest.raises(PermissionDenied, match="enable_super_admin"):
        client.issue_certificate("super-admin", good_csr)


def test_client_raises_invalid_argument_for_garbage(client: Client) -> None:
    with pytest.raises(InvalidArgument, match=NOT_A_CSR):
        client.issue_certificate("admin", b"\x00\xff garbage")


def test_client_raises_invalid_argument_for_a_bad_parameter(
    client: Client, good_csr: bytes
) -> None:
    with pytest.raises(InvalidArgument, match="advertise_address: 'nope' is not an IP address"):
        client.issue_certificate(
            "etcd-peer", good_csr, {"node_name": "etcd-1", "advertise_address": "nope"}
        )


# --- afterwards ----------------------------------------------------------------------


def test_server_still_serves_after_all_of_that(server: RunningServer, client: Client) -> None:
    with server.channel() as fresh:
        reply = health_pb2_grpc.HealthStub(fresh).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert server.process is not None
    assert server.process.poll() is None
    names = sorted(ca.authority for ca in client.ca_certificates())
    assert names == ["etcd-ca", "front-proxy-ca", "kubernetes-ca"]
    assert any(p.name == "admin" for p in client.profiles())
