"""The pipeline's refusals: the right error, an actionable message, what the decision
learned on the error (for the API layer's one refusal record), and nothing issued.

Since the restructuring the pipeline writes no refusal record itself: it raises the
taxonomy error with ``context`` holding what its stages had learned (the requested
subject once the CSR parsed; the key and the request fingerprint once the request was
read whole), and the API layer records it, once, for every method, through
``Ledger.refusal``. So each case here checks the error and its context, that the
pipeline left no record and no certificate, and that ``Ledger.refusal`` makes the one
record the API layer would write from it. tests/integration/test_refusals.py keeps one
case per rule over the real server.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519
from cryptography.x509.oid import NameOID
from kubeca_client.errors import InvalidArgument, KubecaError, NotFound, PermissionDenied
from kubeca_server.issuance.model import IssueRequest

from tests.unit.conftest import CALLER, World, WorldFactory, inventory, issue
from tests.unit.helpers import (
    NODE_PARAMS,
    cert_sans,
    der_bit_string,
    der_children,
    der_length,
    der_sequence,
    dns_sans,
    ip_sans,
    make_csr,
    p256_key,
    rsa_key,
    subject,
)

# How far a request got before it was refused: what its error's context holds.
NOTHING = frozenset[str]()  # refused before the CSR was read
SUBJECT = frozenset({"requested_subject"})  # the CSR parsed; its key or inputs did not pass
WHOLE = frozenset({"requested_subject", "public_key_sha256", "request_fingerprint"})


def bad_signature_csr() -> bytes:
    der = bytearray(make_csr(der=True))
    # The last octet is inside the ECDSA signature's s INTEGER: still DER, no longer valid.
    der[-1] ^= 0x01
    return bytes(der)


def flipped_signature_csr(key: Any, encoding: serialization.Encoding) -> bytes:
    der = bytearray(make_csr(key, der=True))
    der[-1] ^= 0x01  # inside the signature BIT STRING
    tampered = x509.load_der_x509_csr(bytes(der))  # still well-formed, just not valid
    assert not tampered.is_signature_valid
    return tampered.public_bytes(encoding)


def csr_signed_by_another_key() -> bytes:
    claimed, signer = (ec.generate_private_key(ec.SECP256R1()) for _ in range(2))
    tbs, algorithm, _ = der_children(make_csr(claimed, der=True))
    # The exact request body of `claimed`, with a valid signature by `signer` over it.
    forged = der_sequence(
        [tbs, algorithm, der_bit_string(signer.sign(tbs, ec.ECDSA(hashes.SHA256())))]
    )
    assert x509.load_der_x509_csr(forged).public_key() == claimed.public_key()
    return forged


def csr_with_another_csrs_signature() -> bytes:
    first, second = (
        der_children(make_csr(ec.generate_private_key(ec.SECP256R1()), der=True)) for _ in range(2)
    )
    return der_sequence([first[0], first[1], second[2]])


def half_a_csr() -> bytes:
    csr = make_csr()
    return csr[: len(csr) // 2]


@dataclass(frozen=True)
class Refusal:
    profile: str
    csr: Callable[[], bytes]
    error: type[KubecaError]
    says: tuple[str, ...]
    learned: frozenset[str]
    params: tuple[tuple[str, str], ...] = ()
    lifetime: timedelta | None = None

    def request(self) -> IssueRequest:
        return IssueRequest(self.profile, self.csr(), dict(self.params), self.lifetime)


def node(**overrides: str) -> tuple[tuple[str, str], ...]:
    return tuple(dict(NODE_PARAMS, **overrides).items())


def name(common_name: str, *organizations: str) -> Callable[[], bytes]:
    return lambda: make_csr(name=subject(common_name, *organizations))


APISERVER = (("node_name", "cp-1"), ("advertise_address", "10.0.0.10"))
NOT_A_CSR = "not a PKCS#10 certificate request"
BAD_SIGNATURE = "csr signature does not verify"


def garbage(data: bytes) -> Refusal:
    return Refusal("admin", lambda: data, InvalidArgument, (NOT_A_CSR,), NOTHING)


REFUSALS = {
    # --- the CSR itself --------------------------------------------------------------
    "garbage-csr": Refusal(
        "admin", lambda: b"\x30\x03garbage", InvalidArgument, ("PKCS#10",), NOTHING
    ),
    "garbage-pem-csr": Refusal(
        "admin",
        lambda: b"-----BEGIN CERTIFICATE REQUEST-----\nZm9v\n-----END CERTIFICATE REQUEST-----\n",
        InvalidArgument,
        ("PKCS#10",),
        NOTHING,
    ),
    "ascii-garbage": garbage(b"hello, I am a certificate signing request"),
    "non-utf8": garbage(b"\xff\xfe\x00\x80\xc3\x28\xa0\xa1\xe2\x28\xa1\x00\x00"),
    "every-byte": garbage(bytes(range(256)) * 8),
    "truncated-der-header": garbage(b"\x30\x82\xff\xff\x30\x82"),
    "der-sequence-of-integer": garbage(b"\x30\x03\x02\x01\x00"),
    "pem-header-base64-garbage-body": garbage(
        b"-----BEGIN CERTIFICATE REQUEST-----\n"
        b"bm90IGEgY3NyIGF0IGFsbCwganVzdCBiYXNlNjQ=\n"
        b"-----END CERTIFICATE REQUEST-----\n"
    ),
    "pem-header-binary-body": garbage(
        b"-----BEGIN CERTIFICATE REQUEST-----\n\x00\xff!!!\n-----END CERTIFICATE REQUEST-----"
    ),
    "pem-header-only": garbage(b"-----BEGIN CERTIFICATE REQUEST-----\n"),
    "truncated-csr": Refusal("admin", half_a_csr, InvalidArgument, (NOT_A_CSR,), NOTHING),
    "empty-csr": Refusal("admin", lambda: b"", InvalidArgument, ("csr is empty",), NOTHING),
    "oversized-csr": Refusal(
        "admin", lambda: b"0" * (16 * 1024 + 1), InvalidArgument, ("16384",), NOTHING
    ),
    "padded-csr": Refusal(
        "admin",
        lambda: make_csr() + b"\n" * (20 * 1024),
        InvalidArgument,
        ("csr is", "at most 16384"),
        NOTHING,
    ),
    "bad-signature": Refusal("admin", bad_signature_csr, InvalidArgument, ("signature",), NOTHING),
    "flipped-ecdsa-pem": Refusal(
        "admin",
        lambda: flipped_signature_csr(p256_key(), serialization.Encoding.PEM),
        InvalidArgument,
        (BAD_SIGNATURE,),
        NOTHING,
    ),
    "flipped-rsa-der": Refusal(
        "admin",
        lambda: flipped_signature_csr(rsa_key(), serialization.Encoding.DER),
        InvalidArgument,
        (BAD_SIGNATURE,),
        NOTHING,
    ),
    "flipped-rsa-pem": Refusal(
        "admin",
        lambda: flipped_signature_csr(rsa_key(), serialization.Encoding.PEM),
        InvalidArgument,
        (BAD_SIGNATURE,),
        NOTHING,
    ),
    "signed-by-another-key": Refusal(
        "admin", csr_signed_by_another_key, InvalidArgument, (BAD_SIGNATURE,), NOTHING
    ),
    "another-csrs-signature": Refusal(
        "admin", csr_with_another_csrs_signature, InvalidArgument, (BAD_SIGNATURE,), NOTHING
    ),
    # --- the key in the CSR -----------------------------------------------------------
    "rsa-1024": Refusal(
        "admin", lambda: make_csr(rsa_key(1024)), InvalidArgument, ("1024 bits", "2048"), SUBJECT
    ),
    "rsa-exponent-3": Refusal(
        "admin",
        lambda: make_csr(rsa_key(2048, 3)),
        InvalidArgument,
        ("public exponent", "65537"),
        SUBJECT,
    ),
    "ed25519": Refusal(
        "admin",
        lambda: make_csr(ed25519.Ed25519PrivateKey.generate()),
        InvalidArgument,
        ("Ed25519", "refused"),
        SUBJECT,
    ),
    "ed448": Refusal(
        "admin",
        lambda: make_csr(ed448.Ed448PrivateKey.generate()),
        InvalidArgument,
        ("Ed448", "refused"),
        SUBJECT,
    ),
    "p521": Refusal(
        "admin",
        lambda: make_csr(ec.generate_private_key(ec.SECP521R1())),
        InvalidArgument,
        ("secp521r1", "P-256"),
        SUBJECT,
    ),
    "secp256k1": Refusal(
        "admin",
        lambda: make_csr(ec.generate_private_key(ec.SECP256K1())),
        InvalidArgument,
        ("secp256k1", "P-256"),
        SUBJECT,
    ),
    "dsa-1024": Refusal(
        "admin",
        lambda: make_csr(dsa.generate_private_key(1024)),  # noqa: S505  weak on purpose
        InvalidArgument,
        ("DSA", "refused"),
        SUBJECT,
    ),
    # --- profiles -----------------------------------------------------------------------
    "unknown-profile": Refusal(
        "cluster-god", make_csr, NotFound, ("cluster-god", "known profiles"), NOTHING
    ),
    "empty-profile": Refusal("", make_csr, NotFound, ("known profiles",), NOTHING),
    "super-admin-disabled": Refusal(
        "super-admin", make_csr, PermissionDenied, ("system:masters", "enable_super_admin"), NOTHING
    ),
    # --- parameters ---------------------------------------------------------------------
    "missing-parameter": Refusal(
        "apiserver",
        make_csr,
        InvalidArgument,
        ("advertise_address",),
        SUBJECT,
        (("node_name", "cp-1"),),
    ),
    "missing-node-name": Refusal(
        "kubelet-client", make_csr, InvalidArgument, ("needs parameter node_name",), SUBJECT
    ),
    "blank-required-parameter": Refusal(
        "kubelet-client",
        make_csr,
        InvalidArgument,
        ("needs parameter node_name",),
        SUBJECT,
        (("node_name", "  "),),
    ),
    "missing-address": Refusal(
        "etcd-server",
        make_csr,
        InvalidArgument,
        ("needs parameter advertise_address",),
        SUBJECT,
        (("node_name", "etcd-1"),),
    ),
    "unknown-parameter": Refusal(
        "admin",
        make_csr,
        InvalidArgument,
        ("does not take parameter 'groups'",),
        SUBJECT,
        (("groups", "x"),),
    ),
    "unexpected-parameter": Refusal(
        "admin",
        make_csr,
        InvalidArgument,
        ("does not take parameter 'node_name'", "no parameters"),
        SUBJECT,
        (("node_name", "node-1"),),
    ),
    "path-as-parameter-name": Refusal(
        "kubelet-client",
        make_csr,
        InvalidArgument,
        ("does not take parameter", "node_name"),
        SUBJECT,
        (("node_name", "node-1"), ("../../etc/passwd", "x")),
    ),
    "node-name-underscore": Refusal(
        "kubelet-client",
        make_csr,
        InvalidArgument,
        ("Bad_Name", "DNS-1123"),
        SUBJECT,
        (("node_name", "Bad_Name"),),
    ),
    "node-name-uppercase": Refusal(
        "etcd-server", make_csr, InvalidArgument, ("node_name",), SUBJECT, node(node_name="Node1")
    ),
    "node-name-too-long": Refusal(
        "kubelet-serving",
        make_csr,
        InvalidArgument,
        ("node_name", "DNS-1123", "..."),
        SUBJECT,
        (("node_name", "a" * 300),),
    ),
    "node-name-path": Refusal(
        "kubelet-client",
        make_csr,
        InvalidArgument,
        ("node_name", "DNS-1123"),
        SUBJECT,
        (("node_name", "node-1.example.com/../../etc"),),
    ),
    "advertise-not-ip": Refusal(
        "apiserver",
        make_csr,
        InvalidArgument,
        ("not an IP address",),
        SUBJECT,
        node(advertise_address="cp-1.example"),
    ),
    "advertise-out-of-range": Refusal(
        "etcd-server",
        make_csr,
        InvalidArgument,
        ("advertise_address", "'10.0.0.300'", "not an IP address"),
        SUBJECT,
        (("node_name", "etcd-1"), ("advertise_address", "10.0.0.300")),
    ),
    "extra-san-neither-ip-nor-dns": Refusal(
        "apiserver",
        make_csr,
        InvalidArgument,
        ("extra_sans", "'bad_san!'", "neither an IP address"),
        SUBJECT,
        node(extra_sans="ok.example,bad_san!"),
    ),
    "too-many-extra-sans": Refusal(
        "apiserver",
        make_csr,
        InvalidArgument,
        ("extra_sans", "at most 100"),
        SUBJECT,
        (*APISERVER, ("extra_sans", ",".join(f"n{i}.example.com" for i in range(101)))),
    ),
    "bad-endpoint-port": Refusal(
        "apiserver",
        make_csr,
        InvalidArgument,
        ("control_plane_endpoint", "invalid port"),
        SUBJECT,
        node(control_plane_endpoint="api.example:99999"),
    ),
    "bad-service-cidr": Refusal(
        "apiserver",
        make_csr,
        InvalidArgument,
        ("service_cidr", "CIDR"),
        SUBJECT,
        node(service_cidr="10.96.0.1/12"),
    ),
    "service-cidr-without-a-host-address": Refusal(
        "apiserver",
        make_csr,
        InvalidArgument,
        ("service_cidr",),
        SUBJECT,
        node(service_cidr="10.96.0.0/32"),
    ),
    "bad-dns-domain": Refusal(
        "apiserver",
        make_csr,
        InvalidArgument,
        ("dns_domain", "DNS-1123"),
        SUBJECT,
        (*APISERVER, ("dns_domain", "Cluster.Local")),
    ),
    # --- what the CSR asks for that the profile would not issue -------------------------
    "admin-asks-system-masters": Refusal(
        "admin",
        name("kubernetes-admin", "system:masters"),
        InvalidArgument,
        ("O=system:masters", "does not match", "kubeadm:cluster-admins"),
        WHOLE,
    ),
    "kubelet-asks-system-masters": Refusal(
        "kubelet-client",
        name("system:node:cp-1", "system:nodes", "system:masters"),
        InvalidArgument,
        ("does not match", "system:masters"),
        WHOLE,
        (("node_name", "cp-1"),),
    ),
    "kube-proxy-asks-system-masters": Refusal(
        "kube-proxy",
        name("system:kube-proxy", "system:masters"),
        InvalidArgument,
        ("does not match what this profile issues", "masters"),
        WHOLE,
    ),
    "subject-other-cn": Refusal(
        "scheduler",
        name("system:kube-controller-manager"),
        InvalidArgument,
        ("does not match what this profile issues", "controller"),
        WHOLE,
    ),
    "kubelet-asks-another-node": Refusal(
        "kubelet-client",
        name("system:node:node-2", "system:nodes"),
        InvalidArgument,
        ("does not match what this profile issues", "system:node:node-2"),
        WHOLE,
        (("node_name", "node-1"),),
    ),
    "subject-extra-organization": Refusal(
        "etcd-healthcheck-client",
        name("kube-etcd-healthcheck-client", "x"),
        InvalidArgument,
        ("does not match what this profile issues", "O=x"),
        WHOLE,
    ),
    "san-not-in-profile": Refusal(
        "apiserver",
        lambda: make_csr(sans=dns_sans("kubernetes", "evil.example.com")),
        InvalidArgument,
        ("evil.example.com",),
        WHOLE,
        node(),
    ),
    "kubelet-serving-san-not-in-profile": Refusal(
        "kubelet-serving",
        lambda: make_csr(sans=dns_sans("node-1", "evil.example.com")),
        InvalidArgument,
        ("evil.example.com", "would not issue"),
        WHOLE,
        (("node_name", "node-1"),),
    ),
    "ip-san-not-in-profile": Refusal(
        "etcd-peer",
        lambda: make_csr(sans=ip_sans("127.0.0.1", "10.9.9.9")),
        InvalidArgument,
        ("10.9.9.9",),
        WHOLE,
        node(),
    ),
    "san-on-client-profile": Refusal(
        "admin",
        lambda: make_csr(sans=dns_sans("kubernetes")),
        InvalidArgument,
        ("kubernetes",),
        WHOLE,
    ),
    "ip-san-on-client-profile": Refusal(
        "admin", lambda: make_csr(sans=ip_sans("10.0.0.1")), InvalidArgument, ("10.0.0.1",), WHOLE
    ),
    "email-san": Refusal(
        "apiserver",
        lambda: make_csr(sans=[x509.RFC822Name("root@example.com")]),
        InvalidArgument,
        ("RFC822Name", "DNS and IP"),
        WHOLE,
        node(),
    ),
    "uri-san": Refusal(
        "apiserver",
        lambda: make_csr(sans=[x509.UniformResourceIdentifier("spiffe://x/y")]),
        InvalidArgument,
        ("UniformResourceIdentifier", "DNS and IP"),
        WHOLE,
        node(),
    ),
    "uri-san-on-kubelet-serving": Refusal(
        "kubelet-serving",
        lambda: make_csr(sans=[x509.UniformResourceIdentifier("spiffe://evil/x")]),
        InvalidArgument,
        ("Uniform", "DNS and IP"),
        WHOLE,
        (("node_name", "node-1"),),
    ),
    # --- lifetimes ----------------------------------------------------------------------
    "lifetime-too-short": Refusal(
        "admin",
        make_csr,
        InvalidArgument,
        ("lifetime", "below the minimum"),
        SUBJECT,
        lifetime=timedelta(minutes=9, seconds=59),
    ),
    "lifetime-too-long": Refusal(
        "admin",
        make_csr,
        InvalidArgument,
        ("lifetime", "exceeds the maximum"),
        SUBJECT,
        lifetime=timedelta(days=365, seconds=1),
    ),
    "lifetime-ten-years": Refusal(
        "admin",
        make_csr,
        InvalidArgument,
        ("lifetime", "exceeds the maximum"),
        SUBJECT,
        lifetime=timedelta(days=3650),
    ),
    "lifetime-zero": Refusal(
        "admin", make_csr, InvalidArgument, ("positive",), SUBJECT, lifetime=timedelta(0)
    ),
    "lifetime-negative": Refusal(
        "admin", make_csr, InvalidArgument, ("positive",), SUBJECT, lifetime=timedelta(seconds=-1)
    ),
}


@pytest.mark.parametrize("case", REFUSALS.values(), ids=REFUSALS.keys())
def test_refusal_raises_the_right_error_naming_the_problem(world: World, case: Refusal) -> None:
    with pytest.raises(case.error) as caught:
        world.pipeline.issue(CALLER, case.request())
    assert type(caught.value) is case.error
    for fragment in case.says:
        assert fragment in caught.value.message, (fragment, caught.value.message)


@pytest.mark.parametrize("case", REFUSALS.values(), ids=REFUSALS.keys())
def test_refusal_carries_what_it_learned_and_leaves_nothing_behind(
    world: World, case: Refusal
) -> None:
    with pytest.raises(KubecaError) as caught:
        world.pipeline.issue(CALLER, case.request())
    context = caught.value.context
    assert set(context) & WHOLE == case.learned, context
    # The pipeline records no refusal (the API layer does) and issues nothing.
    assert world.records() == []
    assert inventory(world.store) == []


@pytest.mark.parametrize("case", REFUSALS.values(), ids=REFUSALS.keys())
def test_refusal_becomes_one_refused_record_through_the_ledger(world: World, case: Refusal) -> None:
    """What the API layer does with the error: one record, from its context."""
    request = case.request()
    with pytest.raises(KubecaError) as caught:
        world.pipeline.issue(CALLER, request)
    world.ledger.refusal(
        "certificate.refused", caught.value, {**request.fields(), **CALLER.fields()}
    )
    (record,) = world.records()
    assert record["event"] == "certificate.refused"
    assert (record["outcome"], record["level"]) == ("refused", "warning")
    assert record["reason"] == caught.value.message
    assert record["status"] == case.error.status
    assert record["caller"] == "test-caller"
    assert record["profile"] == case.profile
    for learned in case.learned:
        assert record[learned] == caught.value.context[learned]


def test_a_refusal_leaves_the_next_request_unaffected(world: World) -> None:
    with pytest.raises(InvalidArgument):
        world.pipeline.issue(CALLER, REFUSALS["admin-asks-system-masters"].request())
    issued = issue(world, "admin")
    assert [(r["event"], r["outcome"]) for r in world.records()] == [
        ("certificate.issued", "issued")
    ]
    assert [row.serial for row in inventory(world.store)] == [issued.serial_hex]


def test_escalation_attempt_carries_the_requested_subject(world: World) -> None:
    with pytest.raises(InvalidArgument) as caught:
        world.pipeline.issue(CALLER, REFUSALS["admin-asks-system-masters"].request())
    assert caught.value.context["requested_subject"] == "CN=kubernetes-admin,O=system:masters"
    world.ledger.refusal("certificate.refused", caught.value, CALLER.fields())
    (record,) = world.records()
    assert "system:masters" in record["requested_subject"]
    # Refused, at warning level, and nothing in it claims a system:masters issuance.
    assert (record["event"], record["outcome"], record["level"]) == (
        "certificate.refused",
        "refused",
        "warning",
    )
    assert "serial" not in record and "system_masters" not in record


def test_the_requested_subject_in_the_context_is_bounded(world: World) -> None:
    csr = make_csr(name=subject("x" * 64, *(f"o{i}" * 60 for i in range(20))))
    with pytest.raises(InvalidArgument) as caught:
        world.pipeline.issue(CALLER, IssueRequest("admin", csr))
    assert len(caught.value.context["requested_subject"]) <= 512


def test_too_many_parameters_are_refused(world: World) -> None:
    params = {f"p{i}": "x" for i in range(33)}
    with pytest.raises(InvalidArgument, match="at most 32 parameters"):
        world.pipeline.issue(CALLER, IssueRequest("admin", make_csr(), params))


def test_a_thousand_parameters_are_refused_and_described_bounded(world: World) -> None:
    request = IssueRequest("kubelet-client", make_csr(), {f"p{i}": "x" for i in range(1000)})
    with pytest.raises(InvalidArgument, match="at most 32"):
        world.pipeline.issue(CALLER, request)
    assert len(request.fields()["parameters"]) <= 64


def test_overlong_parameter_is_refused(world: World) -> None:
    params = dict(NODE_PARAMS, extra_sans="a," * 2100)
    with pytest.raises(InvalidArgument, match="longer than 4096"):
        world.pipeline.issue(CALLER, IssueRequest("etcd-server", make_csr(), params))


def test_huge_parameter_value_is_refused_and_described_bounded(world: World) -> None:
    value = "a" * 10_000
    request = IssueRequest("kubelet-client", make_csr(), {"node_name": value})
    with pytest.raises(InvalidArgument, match="longer than 4096") as caught:
        world.pipeline.issue(CALLER, request)
    assert value not in caught.value.message
    assert len(request.fields()["parameters"]["node_name"]) <= 256


def test_endpoint_with_a_non_ascii_digit_port_is_invalid_argument(world: World) -> None:
    # "²".isdigit() is True but int("²") raises ValueError: must still be a user error.
    params = dict(NODE_PARAMS, control_plane_endpoint="api.example:\u00b2")
    with pytest.raises(InvalidArgument, match="port"):
        world.pipeline.issue(CALLER, IssueRequest("apiserver", make_csr(), params))


# --- inputs that once reached callers as INTERNAL ----------------------------------------


def test_a_common_name_over_64_characters_is_refused_not_internal(world: World) -> None:
    params = {"node_name": "a" * 60 + ".example", "advertise_address": "10.0.0.1"}
    with pytest.raises(InvalidArgument, match=r"X\.509 allows 64") as caught:
        world.pipeline.issue(CALLER, IssueRequest("etcd-server", make_csr(), params))
    assert set(caught.value.context) >= WHOLE


def test_a_kubelet_node_name_too_long_for_its_common_name_is_refused(world: World) -> None:
    request = IssueRequest("kubelet-client", make_csr(), {"node_name": "n" * 53})
    with pytest.raises(InvalidArgument, match="use a shorter node_name") as caught:
        world.pipeline.issue(CALLER, request)
    assert caught.value.status == "INVALID_ARGUMENT"
    assert world.records() == []


def _csr_with_raw_subject_bytes(utf8_value: bytes) -> bytes:
    """A validly signed CSR whose CN holds bytes that are not UTF-8 (a UTF8String)."""
    key = p256_key()
    marker = "M" * len(utf8_value)
    pem = make_csr(key, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, marker)]))
    csr = x509.load_pem_x509_csr(pem)
    tbs = csr.tbs_certrequest_bytes.replace(marker.encode(), utf8_value)
    signature = key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    # Rebuild the outer SEQUENCE: tbs, the same algorithm identifier, the new signature.
    sig_alg = bytes.fromhex("300a06082a8648ce3d040302")  # ecdsa-with-SHA256
    assert sig_alg in csr.public_bytes(serialization.Encoding.DER)
    bit_string = b"\x03" + der_length(len(signature) + 1) + b"\x00" + signature
    return der_sequence([tbs, sig_alg, bit_string])


def test_a_subject_that_is_not_utf8_is_refused_not_internal(world: World) -> None:
    der = _csr_with_raw_subject_bytes(b"\xff\xfe\xfd")
    assert x509.load_der_x509_csr(der).is_signature_valid  # the signature itself is fine
    with pytest.raises(InvalidArgument, match="csr subject cannot be decoded"):
        world.pipeline.issue(CALLER, IssueRequest("admin", der))


@pytest.mark.parametrize(
    "extra_sans",
    ["kubernetes", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "10.96.0.1"],
)
def test_kubelet_serving_cannot_impersonate_the_api_server(world: World, extra_sans: str) -> None:
    request = IssueRequest(
        "kubelet-serving",
        make_csr(),
        {"node_name": "worker-1", "advertise_address": "10.0.0.21", "extra_sans": extra_sans},
    )
    with pytest.raises(InvalidArgument, match="kubelet-serving may not name the API server"):
        world.pipeline.issue(CALLER, request)


def test_kubelet_serving_still_takes_the_nodes_own_extra_names(world: World) -> None:
    params = {
        "node_name": "worker-1",
        "advertise_address": "10.0.0.21",
        "extra_sans": "worker-1.lan",
    }
    issued = issue(world, "kubelet-serving", params)
    san = issued.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert "worker-1.lan" in san.value.get_values_for_type(x509.DNSName)


# --- what a CSR may carry ------------------------------------------------------------


def test_csr_with_exactly_the_profile_subject_is_accepted(world: World) -> None:
    csr = make_csr(name=subject("kubernetes-admin", "kubeadm:cluster-admins"))
    issued = issue(world, "admin", csr=csr)
    assert issued.certificate.subject.rfc4514_string() == (
        "CN=kubernetes-admin,O=kubeadm:cluster-admins"
    )


def test_csr_with_a_node_subject_like_kubeadm_generate_csr_is_accepted(world: World) -> None:
    csr = make_csr(name=subject("system:node:cp-1", "system:nodes"))
    issued = issue(world, "kubelet-client", {"node_name": "cp-1"}, csr)
    assert issued.certificate.subject.rfc4514_string() == "CN=system:node:cp-1,O=system:nodes"


def test_csr_with_a_subset_of_the_sans_gets_all_of_them(world: World) -> None:
    csr = make_csr(
        name=subject("kube-apiserver"),
        sans=dns_sans("kubernetes", "cp-1") + ip_sans("10.96.0.1"),
    )
    issued = issue(world, "apiserver", NODE_PARAMS, csr)
    sans = cert_sans(issued.certificate)
    assert sans is not None
    assert {"kubernetes", "cp-1", "kubernetes.default.svc.cluster.local"} <= sans[0]
    assert len(sans[1]) == 2


def test_csr_asking_for_an_extra_san_passed_in_extra_sans_is_accepted(world: World) -> None:
    csr = make_csr(sans=dns_sans("etcd.example.org"))
    issued = issue(world, "etcd-server", dict(NODE_PARAMS, extra_sans="etcd.example.org"), csr)
    sans = cert_sans(issued.certificate)
    assert sans is not None
    assert "etcd.example.org" in sans[0]


def test_csr_extensions_other_than_san_are_ignored(world: World) -> None:
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=True,
        key_encipherment=True,
        data_encipherment=True,
        key_agreement=True,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    csr = make_csr(
        extensions=[
            (x509.BasicConstraints(ca=True, path_length=None), True),
            (usage, True),
            (x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CODE_SIGNING]), False),
        ]
    )
    certificate = issue(world, "admin", csr=csr).certificate
    assert certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    key_usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert not key_usage.key_cert_sign
    assert not key_usage.crl_sign
    eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]


# --- super-admin -------------------------------------------------------------------------


def test_super_admin_is_refused_by_default(world: World) -> None:
    with pytest.raises(PermissionDenied, match="system:masters") as caught:
        world.pipeline.issue(CALLER, IssueRequest("super-admin", make_csr()))
    assert caught.value.status == "PERMISSION_DENIED"
    assert world.records() == []
    assert inventory(world.store) == []


def test_super_admin_is_issued_when_enabled(make_world: WorldFactory) -> None:
    certificate = issue(make_world(enable_super_admin=True), "super-admin").certificate
    organizations = certificate.subject.get_attributes_for_oid(x509.oid.NameOID.ORGANIZATION_NAME)
    assert [o.value for o in organizations] == ["system:masters"]


def test_super_admin_issuance_is_audited_as_critical(make_world: WorldFactory) -> None:
    world = make_world(enable_super_admin=True)
    issue(world, "super-admin")
    (record,) = world.records()
    assert record["event"] == "certificate.issued"
    assert record["level"] == "critical"
    assert record["system_masters"] is True


def test_ordinary_issuance_is_audited_as_info(world: World) -> None:
    issue(world, "admin")
    (record,) = world.records()
    assert record["level"] == "info"
    assert record["system_masters"] is False


def test_profiles_report_super_admin_disabled_by_default(world: World) -> None:
    enabled = {view.profile.name: view.enabled for view in world.pipeline.profiles(CALLER)}
    assert enabled.pop("super-admin") is False
    assert all(enabled.values())


def test_profiles_report_super_admin_enabled_when_configured(make_world: WorldFactory) -> None:
    world = make_world(enable_super_admin=True)
    enabled = {v.profile.name: v.enabled for v in world.pipeline.profiles(CALLER)}
    assert enabled["super-admin"] is True
