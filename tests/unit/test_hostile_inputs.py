"""Inputs that once reached callers as INTERNAL, or were issued when they should not be."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kubeca_client.errors import InvalidArgument
from kubeca_client.names import parse_ip, parse_san_list
from kubeca_server.authority import Authority, Caller, IssueRequest

from tests.unit.helpers import make_csr, p256_key, read_audit

CALLER = Caller("test-caller")


def _refused(authority: Authority, request: IssueRequest, says: str) -> None:
    with pytest.raises(InvalidArgument, match=says):
        authority.issue(CALLER, request)


def test_a_common_name_over_64_characters_is_refused_not_internal(
    authority: Authority,
) -> None:
    node = "a" * 60 + ".example"
    request = IssueRequest(
        "etcd-server", make_csr(), {"node_name": node, "advertise_address": "10.0.0.1"}
    )
    _refused(authority, request, "X.509 allows 64")


def test_a_kubelet_node_name_too_long_for_its_common_name_is_refused(
    authority: Authority,
) -> None:
    request = IssueRequest("kubelet-client", make_csr(), {"node_name": "n" * 53})
    _refused(authority, request, "use a shorter node_name")


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
    bit_string = b"\x03" + _der_len(len(signature) + 1) + b"\x00" + signature
    body = tbs + sig_alg + bit_string
    return b"\x30" + _der_len(len(body)) + body


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def test_a_subject_that_is_not_utf8_is_refused_not_internal(
    authority: Authority, audit_path: object
) -> None:
    der = _csr_with_raw_subject_bytes(b"\xff\xfe\xfd")
    assert x509.load_der_x509_csr(der).is_signature_valid  # the signature itself is fine
    _refused(authority, IssueRequest("admin", der), "csr subject cannot be decoded")


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "224.0.0.1", "ff02::1", "fe80::1%eth0"])
def test_addresses_no_host_can_be_reached_at_are_refused(address: str) -> None:
    with pytest.raises(InvalidArgument, match="advertise_address"):
        parse_ip(address, "advertise_address")


@pytest.mark.parametrize("san", ["0.0.0.0", "ff02::1"])
def test_extra_sans_refuse_the_same_addresses(san: str) -> None:
    with pytest.raises(InvalidArgument, match="extra_sans"):
        parse_san_list(san, "extra_sans")


@pytest.mark.parametrize(
    "extra_sans",
    ["kubernetes", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "10.96.0.1"],
)
def test_kubelet_serving_cannot_impersonate_the_api_server(
    authority: Authority, extra_sans: str
) -> None:
    request = IssueRequest(
        "kubelet-serving",
        make_csr(),
        {"node_name": "worker-1", "advertise_address": "10.0.0.21", "extra_sans": extra_sans},
    )
    _refused(authority, request, "kubelet-serving may not name the API server")


def test_kubelet_serving_still_takes_the_nodes_own_extra_names(authority: Authority) -> None:
    request = IssueRequest(
        "kubelet-serving",
        make_csr(),
        {"node_name": "worker-1", "advertise_address": "10.0.0.21", "extra_sans": "worker-1.lan"},
    )
    issued = authority.issue(CALLER, request)
    san = issued.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert "worker-1.lan" in san.value.get_values_for_type(x509.DNSName)


def test_every_refusal_here_is_audited(authority: Authority, audit_path: object) -> None:
    request = IssueRequest("kubelet-client", make_csr(), {"node_name": "n" * 53})
    with pytest.raises(InvalidArgument):
        authority.issue(CALLER, request)
    records = read_audit(audit_path)  # type: ignore[arg-type]
    assert [r["outcome"] for r in records] == ["refused"]
    assert records[0]["status"] == "INVALID_ARGUMENT"
