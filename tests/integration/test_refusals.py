"""Hostile and malformed requests against the real server: refused, explained, audited.

Every request in this module must be refused: INVALID_ARGUMENT (NOT_FOUND for an unknown
name, PERMISSION_DENIED for super-admin), with a message that names the problem. Never
INTERNAL, never a traceback to the caller, never a certificate; and each refusal the
service decides is exactly one "certificate.refused" line in the audit log.

Most tests talk to the server through the raw generated stub, so nothing in the thin
client can soften what the server really answers.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
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

# SPKI SHA-256 of every key whose CSR this module sends; none may ever be certified.
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


def _pem(der: bytes, label: str = "CERTIFICATE REQUEST") -> bytes:
    body = base64.encodebytes(der).decode().replace("\n", "")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    text = f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n"
    return text.encode()


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    octets = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(octets)]) + octets


def _der_element_end(der: bytes, offset: int) -> tuple[int, int]:
    """(content start, end) of the DER element that begins at ``offset``."""
    length = der[offset + 1]
    start = offset + 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(der[start : start + count], "big")
        start += count
    return start, start + length


def _der_children(der: bytes) -> list[bytes]:
    """The encoded elements inside the outer SEQUENCE of ``der``."""
    offset, end = _der_element_end(der, 0)
    children = []
    while offset < end:
        _, child_end = _der_element_end(der, offset)
        children.append(der[offset:child_end])
        offset = child_end
    return children


def _der_sequence(children: list[bytes]) -> bytes:
    body = b"".join(children)
    return b"\x30" + _der_length(len(body)) + body


def _der_bit_string(data: bytes) -> bytes:
    return b"\x03" + _der_length(len(data) + 1) + b"\x00" + data


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


@pytest.fixture(scope="module")
def issued_at_start(server: RunningServer) -> int:
    """How many certificates the server had issued before this module's first request."""
    return len(_issued_records(server))


@pytest.fixture(scope="module")
def channel(server: RunningServer, issued_at_start: int) -> Iterator[grpc.Channel]:
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


@pytest.mark.parametrize(
    "csr",
    [
        pytest.param(b"hello, I am a certificate signing request", id="ascii-garbage"),
        pytest.param(b"\xff\xfe\x00\x80\xc3\x28\xa0\xa1\xe2\x28\xa1\x00\x00", id="non-utf8"),
        pytest.param(bytes(range(256)) * 8, id="every-byte"),
        pytest.param(b"\x30\x82\xff\xff\x30\x82", id="truncated-der-header"),
        pytest.param(b"\x30\x03\x02\x01\x00", id="der-sequence-of-integer"),
        pytest.param(
            b"-----BEGIN CERTIFICATE REQUEST-----\n"
            b"bm90IGEgY3NyIGF0IGFsbCwganVzdCBiYXNlNjQ=\n"
            b"-----END CERTIFICATE REQUEST-----\n",
            id="pem-header-base64-garbage-body",
        ),
        pytest.param(
            b"-----BEGIN CERTIFICATE REQUEST-----\n\x00\xff!!!\n-----END CERTIFICATE REQUEST-----",
            id="pem-header-binary-body",
        ),
        pytest.param(b"-----BEGIN CERTIFICATE REQUEST-----\n", id="pem-header-only"),
    ],
)
def test_garbage_csr_is_invalid_argument(
    stub: pb_grpc.CertificateAuthorityStub, server: RunningServer, csr: bytes
) -> None:
    refusal = _refuse(stub, server, _request("admin", csr))
    _assert_refused(refusal, grpc.StatusCode.INVALID_ARGUMENT, NOT_A_CSR, profile="admin")


def test_empty_csr_is_invalid_argument(
    stub: pb_grpc.CertificateAuthorityStub, server: RunningServer
) -> None:
    refusal = _refuse(stub, server, _request("admin", b""))
    _assert_refused(refusal, grpc.StatusCode.INVALID_ARGUMENT, "csr is empty", profile="admin")


def test_truncated_csr_is_invalid_argument(
    stub: pb_grpc.CertificateAuthorityStub, server: RunningServer, good_csr: bytes
) -> None:
    refusal = _refuse(stub, server, _request("admin", good_csr[: len(good_csr) // 2]))
    _assert_refused(refusal, grpc.StatusCode.INVALID_ARGUMENT, NOT_A_CSR, profile="admin")


def test_certificate_instead_of_csr_is_invalid_argument(
    stub: pb_grpc.CertificateAuthorityStub, server: RunningServer, ca_files: dict[str, Path]
) -> None:
    certificate = ca_files["kubernetes-ca"].read_bytes()
    refusal = _refuse(stub, server, _request("admin", certificate))
    _assert_refused(refusal, grpc.StatusCode.INVALID_ARGUMENT, NOT_A_CSR, profile="admin")


BAD_SIGNATURE = "csr signature does not verify"


@pytest.mark.parametrize("encoding", [Encoding.DER, Encoding.PEM], ids=["der", "pem"])
@pytest.mark.parametrize("algorithm", ["ecdsa-p256", "rsa-2048"])
def test_csr_with_a_flipped_signature_byte_is_invalid_argument(
    stub: pb_grpc.CertificateAuthorityStub,
    server: RunningServer,
    encoding: Encoding,
    algorithm: str,
) -> None:
    key: SigningKey = (
        ec.generate_private_key(ec.SECP256R1())
        if algorithm == "ecdsa-p256"
        else rsa.generate_private_key(65537, 2048)
    )
    der = bytearray(_csr(key, encoding=Encoding.DER))
    der[-1] ^= 0x01  # the last octet is inside the signature BIT STRING
    tampered = x509.load_der_x509_csr(bytes(der))  # still well-formed, just not valid
    assert not tampered.is_signature_valid
    refusal = _refuse(stub, server, _request("admin", tampered.public_bytes(encoding)))
    _assert_refused(refusal, grpc.StatusCode.INVALID_ARGUMENT, BAD_SIGNATURE, profile="admin")


def test_csr_signed_by_another_key_than_it_carries_is_invalid_argument(
    stub: pb_grpc.CertificateAuthorityStub, server: RunningServer
) -> None:
    claimed = ec.generate_private_key(ec.SECP256R1())
    signer = ec.generate_private_key(ec.SECP256R1())
    tbs, algorithm, _signature = _der_children(_csr(claimed, encoding=Encoding.DER))
    # The exact request body of `claimed`, with a valid signature by `signer` over it.
    forged = _der_sequence(
        [tbs, algorithm, _der_bit_string(signer.sign(tbs, ec.ECDSA(hashes.SHA256())))]
    )
    parsed = x509.load_der_x509_csr(forged)
    assert parsed.public_key() == claimed.public_key()
    assert not parsed.is_signature_valid
    refusal = _refuse(stub, server, _request("admin", forged))
    _assert_refused(refusal, grpc.StatusCode.INVALID_ARGUMENT, BAD_SIGNATURE, profile="admin")


def test_csr_with_another_csrs_signature_is_invalid_argument(
    stub: pb_grpc.CertificateAuthorityStub, server: RunningServer
) -> None:
    first = _der_children(_csr(ec.generate_private_key(ec.SECP256R1()), encoding=Encoding.DER))
    second = _der_children(_csr(ec.generate_private_key(ec.SECP256R1()), encoding=Encoding.DER))
    swapped = _pem(_der_sequence([first[0], first[1], second[2]]))
    refusal = _refuse(stub, server, _request("admin", swapped))
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


@pytest.mark.parametrize(
    ("make_key", "fragments"),
    [
        pytest.param(
            lambda: rsa.generate_private_key(65537, 1024),  # noqa: S505  weak on purpose
            ("1024 bits", "2048"),
            id="rsa-1024",
        ),
        pytest.param(
            lambda: rsa.generate_private_key(3, 2048), ("public exponent", "65537"), id="rsa-e3"
        ),
        pytest.param(ed25519.Ed25519PrivateKey.generate, ("Ed25519", "refused"), id="ed25519"),
        pytest.param(ed448.Ed448PrivateKey.generate, ("Ed448", "refused"), id="ed448"),
        pytest.param(
            lambda: ec.generate_private_key(ec.SECP521R1()), ("secp521r1", "P-256"), id="p521"
        ),
        pytest.param(
            lambda: ec.generate_private_key(ec.SECP256K1()), ("secp256k1", "P-256"), id="secp256k1"
        ),
        pytest.param(
            lambda: dsa.generate_private_key(1024),  # noqa: S505  weak on purpose
            ("DSA", "refused"),
            id="dsa-1024",
        ),
    ],
)
def test_disallowed_key_is_invalid_argument(
    stub: pb_grpc.CertificateAuthorityStub,
    server: RunningServer,
    make_key: Callable[[], SigningKey],
    fragments: tuple[str, ...],
) -> None:
    key: SigningKey = make_key()
    refusal = _refuse(stub, server, _request("admin", _csr(key)))
    _assert_refused(refusal, grpc.StatusCode.INVALID_ARGUMENT, *fragments, profile="admin")
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


def test_empty_profile_is_not_found(
    stub: pb_grpc.CertificateAuthorityStub, server: RunningServer, good_csr: bytes
) -> None:
    refusal = _refuse(stub, server, _request("", good_csr))
    _assert_refused(refusal, grpc.StatusCode.NOT_FOUND, "known profiles", profile="")


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


@pytest.mark.parametrize(
    ("profile", "parameters", "subject", "fragment"),
    [
        pytest.param("kube-proxy", {}, _name("system:kube-proxy", "system:masters"), "masters"),
        pytest.param("scheduler", {}, _name("system:kube-controller-manager"), "controller"),
        pytest.param(
            "kubelet-client",
            {"node_name": "node-1"},
            _name("system:node:node-2", "system:nodes"),
            "system:node:node-2",
        ),
        pytest.param(
            "kubelet-client",
            {"node_name": "node-1"},
            _name("system:node:node-1", "system:nodes", "system:masters"),
            "system:masters",
        ),
        pytest.param(
            "etcd-healthcheck-client", {}, _name("kube-etcd-healthcheck-client", "x"), "O=x"
        ),
    ],
)
def test_subject_the_profile_does_not_produce_is_invalid_argument(
    stub: pb_grpc.CertificateAuthorityStub,
    server: RunningServer,
    p256: ec.EllipticCurvePrivateKey,
    profile: str,
    parameters: dict[str, str],
    subject: x509.Name,
    fragment: str,
) -> None:
    refusal = _refuse(stub, server, _request(profile, _csr(p256, subject), parameters))
    _assert_refused(
        refusal,
        grpc.StatusCode.INVALID_ARGUMENT,
        "does not match what this profile issues",
        fragment,
        profile=profile,
    )


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


def test_san_on_a_client_profile_is_invalid_argument(
    stub: pb_grpc.CertificateAuthorityStub,
    server: RunningServer,
    p256: ec.EllipticCurvePrivateKey,
) -> None:
    csr = _csr(p256, sans=[x509.IPAddress(ipaddress.ip_address("10.0.0.1"))])
    refusal = _refuse(stub, server, _request("admin", csr))
    _assert_refused(refusal, grpc.StatusCode.INVALID_ARGUMENT, "10.0.0.1", profile="admin")


@pytest.mark.parametrize(
    ("san", "kind"),
    [
        pytest.param(x509.UniformResourceIdentifier("spiffe://evil/x"), "Uniform", id="uri"),
        pytest.param(x509.RFC822Name("root@example.com"), "RFC822Name", id="email"),
    ],
)
def test_san_of_an_unsupported_type_is_invalid_argument(
    stub: pb_grpc.CertificateAuthorityStub,
    server: RunningServer,
    p256: ec.EllipticCurvePrivateKey,
    san: x509.GeneralName,
    kind: str,
) -> None:
    csr = _csr(p256, sans=[san])
    refusal = _refuse(stub, server, _request("kubelet-serving", csr, {"node_name": "node-1"}))
    _assert_refused(
        refusal, grpc.StatusCode.INVALID_ARGUMENT, kind, "DNS and IP", profile="kubelet-serving"
    )


# --- parameters ----------------------------------------------------------------------

APISERVER = {"node_name": "cp-1", "advertise_address": "10.0.0.10"}


@pytest.mark.parametrize(
    ("profile", "parameters", "fragments"),
    [
        pytest.param("kubelet-client", {}, ("needs parameter node_name",), id="missing"),
        pytest.param(
            "kubelet-client", {"node_name": "   "}, ("needs parameter node_name",), id="blank"
        ),
        pytest.param(
            "etcd-server",
            {"node_name": "etcd-1"},
            ("needs parameter advertise_address",),
            id="missing-address",
        ),
        pytest.param(
            "kubelet-client",
            {"node_name": "Node_1"},
            ("node_name", "'Node_1'", "DNS-1123"),
            id="node-name-not-dns1123",
        ),
        pytest.param(
            "kubelet-client",
            {"node_name": "a" * 300},
            ("node_name", "DNS-1123", "..."),
            id="node-name-too-long",
        ),
        pytest.param(
            "kubelet-client",
            {"node_name": "node-1.example.com/../../etc"},
            ("node_name", "DNS-1123"),
            id="node-name-path",
        ),
        pytest.param(
            "etcd-server",
            {"node_name": "etcd-1", "advertise_address": "10.0.0.300"},
            ("advertise_address", "'10.0.0.300'", "not an IP address"),
            id="address-not-ip",
        ),
        pytest.param(
            "etcd-server",
            {"node_name": "etcd-1", "advertise_address": "etcd-1.example.com"},
            ("advertise_address", "not an IP address"),
            id="address-is-a-name",
        ),
        pytest.param(
            "apiserver",
            {**APISERVER, "extra_sans": "ok.example.com,bad_name!"},
            ("extra_sans", "'bad_name!'", "neither an IP address"),
            id="san-neither-ip-nor-name",
        ),
        pytest.param(
            "apiserver",
            {**APISERVER, "extra_sans": ",".join(f"n{i}.example.com" for i in range(101))},
            ("extra_sans", "at most 100"),
            id="too-many-sans",
        ),
        pytest.param(
            "apiserver",
            {**APISERVER, "service_cidr": "10.96.0.1/12"},
            ("service_cidr", "CIDR"),
            id="cidr-host-bits",
        ),
        pytest.param(
            "apiserver",
            {**APISERVER, "control_plane_endpoint": "api.example.com:99999"},
            ("control_plane_endpoint", "invalid port"),
            id="endpoint-bad-port",
        ),
        pytest.param(
            "apiserver",
            {**APISERVER, "dns_domain": "Cluster.Local"},
            ("dns_domain", "DNS-1123"),
            id="dns-domain",
        ),
        pytest.param(
            "admin",
            {"node_name": "node-1"},
            ("does not take parameter 'node_name'", "no parameters"),
            id="unexpected-parameter",
        ),
        pytest.param(
            "kubelet-client",
            {"node_name": "node-1", "../../etc/passwd": "x"},
            ("does not take parameter", "node_name"),
            id="unknown-parameter",
        ),
    ],
)
def test_bad_parameter_is_invalid_argument_naming_it(
    stub: pb_grpc.CertificateAuthorityStub,
    server: RunningServer,
    good_csr: bytes,
    profile: str,
    parameters: dict[str, str],
    fragments: tuple[str, ...],
) -> None:
    refusal = _refuse(stub, server, _request(profile, good_csr, parameters))
    _assert_refused(refusal, grpc.StatusCode.INVALID_ARGUMENT, *fragments, profile=profile)


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


@pytest.mark.parametrize(
    ("lifetime_seconds", "fragments"),
    [
        pytest.param(-1, ("lifetime",), id="negative"),
        pytest.param(-(2**63), ("lifetime",), id="most-negative"),
        pytest.param(60, ("lifetime", "below the minimum"), id="one-minute"),
        pytest.param(10 * 365 * 86400, ("lifetime", "exceeds the maximum"), id="ten-years"),
    ],
)
def test_bad_lifetime_is_invalid_argument(
    stub: pb_grpc.CertificateAuthorityStub,
    server: RunningServer,
    good_csr: bytes,
    lifetime_seconds: int,
    fragments: tuple[str, ...],
) -> None:
    request = _request("admin", good_csr, lifetime_seconds=lifetime_seconds)
    refusal = _refuse(stub, server, request)
    _assert_refused(
        refusal, grpc.StatusCode.INVALID_ARGUMENT, *fragments, profile="admin", audited=False
    )


@pytest.mark.parametrize("lifetime_seconds", [2**62, 2**63 - 1], ids=["2^62", "int64-max"])
def test_absurdly_long_lifetime_is_invalid_argument_saying_it_is_too_long(
    stub: pb_grpc.CertificateAuthorityStub,
    server: RunningServer,
    good_csr: bytes,
    lifetime_seconds: int,
) -> None:
    request = _request("admin", good_csr, lifetime_seconds=lifetime_seconds)
    refusal = _refuse(stub, server, request)
    _assert_refused(
        refusal, grpc.StatusCode.INVALID_ARGUMENT, "lifetime", profile="admin", audited=False
    )
    # The value is positive; the problem is that it is too long, and the message must say so.
    assert "maximum" in refusal.details or "too long" in refusal.details, refusal.details


@pytest.mark.parametrize(
    "lifetime_seconds", [60, -1, 2**62], ids=["below-minimum", "negative", "absurd"]
)
def test_lifetime_refusal_is_audited(
    stub: pb_grpc.CertificateAuthorityStub,
    server: RunningServer,
    good_csr: bytes,
    lifetime_seconds: int,
) -> None:
    refusal = _refuse(stub, server, _request("admin", good_csr, lifetime_seconds=lifetime_seconds))
    _assert_refused(refusal, grpc.StatusCode.INVALID_ARGUMENT, "lifetime", profile="admin")


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


def test_none_of_these_requests_got_a_certificate(
    server: RunningServer, issued_at_start: int
) -> None:
    issued = _issued_records(server)
    assert len(issued) == issued_at_start
    certified = {r.get("public_key_sha256") for r in issued} & SENT_KEYS
    assert not certified, f"keys from refused requests were certified: {certified}"
    refused = [r for r in _audit_records(server) if r["event"] == "certificate.refused"]
    assert refused
    assert all(r["outcome"] == "refused" for r in refused)
    assert not [r for r in refused if r.get("status") == "INTERNAL"]
