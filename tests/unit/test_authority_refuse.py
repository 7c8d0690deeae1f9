"""Authority.issue refusals: the right error, an actionable message, one audit record."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from kubeca_client.errors import InvalidArgument, KubecaError, NotFound, PermissionDenied
from kubeca_server.authority import Authority, Caller, IssueRequest

from tests.unit.conftest import AuthorityFactory
from tests.unit.helpers import (
    NODE_PARAMS,
    cert_sans,
    dns_sans,
    ip_sans,
    make_csr,
    read_audit,
    rsa_key,
    subject,
)

CALLER = Caller("test-caller")


def bad_signature_csr() -> bytes:
    der = bytearray(make_csr(der=True))
    # The last octet is inside the ECDSA signature's s INTEGER: still DER, no longer valid.
    der[-1] ^= 0x01
    return bytes(der)


@dataclass(frozen=True)
class Refusal:
    profile: str
    csr: Callable[[], bytes]
    error: type[KubecaError]
    says: str
    params: tuple[tuple[str, str], ...] = ()
    lifetime: timedelta | None = None

    def request(self) -> IssueRequest:
        return IssueRequest(self.profile, self.csr(), dict(self.params), self.lifetime)


def node(**overrides: str) -> tuple[tuple[str, str], ...]:
    return tuple(dict(NODE_PARAMS, **overrides).items())


REFUSALS = {
    "garbage-csr": Refusal("admin", lambda: b"\x30\x03garbage", InvalidArgument, "PKCS#10"),
    "garbage-pem-csr": Refusal(
        "admin",
        lambda: b"-----BEGIN CERTIFICATE REQUEST-----\nZm9v\n-----END CERTIFICATE REQUEST-----\n",
        InvalidArgument,
        "PKCS#10",
    ),
    "empty-csr": Refusal("admin", lambda: b"", InvalidArgument, "csr is empty"),
    "oversized-csr": Refusal("admin", lambda: b"0" * (16 * 1024 + 1), InvalidArgument, "16384"),
    "bad-signature": Refusal("admin", bad_signature_csr, InvalidArgument, "signature"),
    "rsa-1024": Refusal("admin", lambda: make_csr(rsa_key(1024)), InvalidArgument, "1024 bits"),
    "rsa-exponent-3": Refusal(
        "admin", lambda: make_csr(rsa_key(2048, 3)), InvalidArgument, "exponent"
    ),
    "ed25519": Refusal(
        "admin",
        lambda: make_csr(ed25519.Ed25519PrivateKey.generate()),
        InvalidArgument,
        "Ed25519",
    ),
    "p521": Refusal(
        "admin",
        lambda: make_csr(ec.generate_private_key(ec.SECP521R1())),
        InvalidArgument,
        "secp521r1",
    ),
    "unknown-profile": Refusal("cluster-god", make_csr, NotFound, "cluster-god"),
    "missing-parameter": Refusal(
        "apiserver",
        make_csr,
        InvalidArgument,
        "advertise_address",
        (("node_name", "cp-1"),),
    ),
    "blank-required-parameter": Refusal(
        "kubelet-client", make_csr, InvalidArgument, "node_name", (("node_name", "  "),)
    ),
    "unknown-parameter": Refusal(
        "admin", make_csr, InvalidArgument, "does not take parameter 'groups'", (("groups", "x"),)
    ),
    "node-name-underscore": Refusal(
        "kubelet-client", make_csr, InvalidArgument, "Bad_Name", (("node_name", "Bad_Name"),)
    ),
    "node-name-uppercase": Refusal(
        "etcd-server", make_csr, InvalidArgument, "node_name", node(node_name="Node1")
    ),
    "node-name-too-long": Refusal(
        "kubelet-serving", make_csr, InvalidArgument, "node_name", (("node_name", "a" * 300),)
    ),
    "advertise-not-ip": Refusal(
        "apiserver",
        make_csr,
        InvalidArgument,
        "not an IP address",
        node(advertise_address="cp-1.example"),
    ),
    "extra-san-neither-ip-nor-dns": Refusal(
        "apiserver",
        make_csr,
        InvalidArgument,
        "bad_san!",
        node(extra_sans="ok.example,bad_san!"),
    ),
    "bad-endpoint-port": Refusal(
        "apiserver",
        make_csr,
        InvalidArgument,
        "port",
        node(control_plane_endpoint="api.example:99999"),
    ),
    "bad-service-cidr": Refusal(
        "apiserver", make_csr, InvalidArgument, "service_cidr", node(service_cidr="10.96.0.1/12")
    ),
    "service-cidr-without-a-host-address": Refusal(
        "apiserver", make_csr, InvalidArgument, "service_cidr", node(service_cidr="10.96.0.0/32")
    ),
    "admin-asks-system-masters": Refusal(
        "admin",
        lambda: make_csr(name=subject("kubernetes-admin", "system:masters")),
        InvalidArgument,
        "does not match",
    ),
    "kubelet-asks-system-masters": Refusal(
        "kubelet-client",
        lambda: make_csr(name=subject("system:node:cp-1", "system:nodes", "system:masters")),
        InvalidArgument,
        "does not match",
        (("node_name", "cp-1"),),
    ),
    "subject-other-cn": Refusal(
        "scheduler",
        lambda: make_csr(name=subject("system:kube-controller-manager")),
        InvalidArgument,
        "does not match",
    ),
    "san-not-in-profile": Refusal(
        "apiserver",
        lambda: make_csr(sans=dns_sans("kubernetes", "evil.example.com")),
        InvalidArgument,
        "evil.example.com",
        node(),
    ),
    "ip-san-not-in-profile": Refusal(
        "etcd-peer",
        lambda: make_csr(sans=ip_sans("127.0.0.1", "10.9.9.9")),
        InvalidArgument,
        "10.9.9.9",
        node(),
    ),
    "san-on-client-profile": Refusal(
        "admin",
        lambda: make_csr(sans=dns_sans("kubernetes")),
        InvalidArgument,
        "kubernetes",
    ),
    "email-san": Refusal(
        "apiserver",
        lambda: make_csr(sans=[x509.RFC822Name("root@example.com")]),
        InvalidArgument,
        "RFC822Name",
        node(),
    ),
    "uri-san": Refusal(
        "apiserver",
        lambda: make_csr(sans=[x509.UniformResourceIdentifier("spiffe://x/y")]),
        InvalidArgument,
        "UniformResourceIdentifier",
        node(),
    ),
    "lifetime-too-short": Refusal(
        "admin", make_csr, InvalidArgument, "minimum", lifetime=timedelta(minutes=9, seconds=59)
    ),
    "lifetime-too-long": Refusal(
        "admin", make_csr, InvalidArgument, "maximum", lifetime=timedelta(days=365, seconds=1)
    ),
    "lifetime-zero": Refusal("admin", make_csr, InvalidArgument, "positive", lifetime=timedelta(0)),
    "lifetime-negative": Refusal(
        "admin", make_csr, InvalidArgument, "positive", lifetime=timedelta(seconds=-1)
    ),
    "super-admin-disabled": Refusal(
        "super-admin", make_csr, PermissionDenied, "enable_super_admin"
    ),
}


@pytest.mark.parametrize("case", REFUSALS.values(), ids=REFUSALS.keys())
def test_refusal_raises_the_right_error_naming_the_problem(
    authority: Authority, case: Refusal
) -> None:
    with pytest.raises(case.error) as caught:
        authority.issue(CALLER, case.request())
    assert type(caught.value) is case.error
    assert case.says in caught.value.message


@pytest.mark.parametrize("case", REFUSALS.values(), ids=REFUSALS.keys())
def test_refusal_writes_one_refused_audit_record(
    authority: Authority, audit_path: Path, case: Refusal
) -> None:
    with pytest.raises(KubecaError) as caught:
        authority.issue(CALLER, case.request())
    records = read_audit(audit_path)
    assert len(records) == 1
    (record,) = records
    assert record["event"] == "certificate.refused"
    assert record["outcome"] == "refused"
    assert record["reason"] == caught.value.message
    assert record["status"] == case.error.status
    assert record["caller"] == "test-caller"
    assert record["profile"] == case.profile
    assert not any(r["event"] == "certificate.issued" for r in records)


def test_refusal_is_recorded_before_a_success_and_independently(
    authority: Authority, audit_path: Path
) -> None:
    with pytest.raises(InvalidArgument):
        authority.issue(CALLER, REFUSALS["admin-asks-system-masters"].request())
    authority.issue(CALLER, IssueRequest("admin", make_csr()))
    events = [(r["event"], r["outcome"]) for r in read_audit(audit_path)]
    assert events == [("certificate.refused", "refused"), ("certificate.issued", "issued")]


def test_escalation_attempt_is_audited_with_the_requested_subject(
    authority: Authority, audit_path: Path
) -> None:
    with pytest.raises(InvalidArgument):
        authority.issue(CALLER, REFUSALS["admin-asks-system-masters"].request())
    (record,) = read_audit(audit_path)
    assert "system:masters" in record["requested_subject"]
    # Refused, at warning level, and nothing in it claims a system:masters issuance.
    assert (record["event"], record["outcome"], record["level"]) == (
        "certificate.refused",
        "refused",
        "warning",
    )
    assert "serial" not in record and "system_masters" not in record


def test_record_refusal_writes_one_request_refused_record(
    authority: Authority, audit_path: Path
) -> None:
    error = InvalidArgument("request is not a valid IssueCertificateRequest")
    authority.record_refusal(Caller("c", "ipv4:10.0.0.1:1"), "IssueCertificate", error)
    (record,) = read_audit(audit_path)
    assert record["event"] == "request.refused"
    assert record["outcome"] == "refused"
    assert record["method"] == "IssueCertificate"
    assert record["reason"] == error.message
    assert record["status"] == "INVALID_ARGUMENT"
    assert record["peer"] == "ipv4:10.0.0.1:1"


def test_too_many_parameters_are_refused(authority: Authority) -> None:
    params = {f"p{i}": "x" for i in range(33)}
    with pytest.raises(InvalidArgument, match="at most 32 parameters"):
        authority.issue(CALLER, IssueRequest("admin", make_csr(), params))


def test_overlong_parameter_is_refused(authority: Authority) -> None:
    params = dict(NODE_PARAMS, extra_sans="a," * 2100)
    with pytest.raises(InvalidArgument, match="longer than 4096"):
        authority.issue(CALLER, IssueRequest("etcd-server", make_csr(), params))


def test_endpoint_with_a_non_ascii_digit_port_is_invalid_argument(authority: Authority) -> None:
    # "²".isdigit() is True but int("²") raises ValueError: must still be a user error.
    params = dict(NODE_PARAMS, control_plane_endpoint="api.example:\u00b2")
    with pytest.raises(InvalidArgument, match="port"):
        authority.issue(CALLER, IssueRequest("apiserver", make_csr(), params))


# --- what a CSR may carry ------------------------------------------------------------


def test_csr_with_exactly_the_profile_subject_is_accepted(authority: Authority) -> None:
    csr = make_csr(name=subject("kubernetes-admin", "kubeadm:cluster-admins"))
    issued = authority.issue(CALLER, IssueRequest("admin", csr))
    assert issued.certificate.subject.rfc4514_string() == (
        "CN=kubernetes-admin,O=kubeadm:cluster-admins"
    )


def test_csr_with_a_node_subject_like_kubeadm_generate_csr_is_accepted(
    authority: Authority,
) -> None:
    csr = make_csr(name=subject("system:node:cp-1", "system:nodes"))
    issued = authority.issue(CALLER, IssueRequest("kubelet-client", csr, {"node_name": "cp-1"}))
    assert issued.certificate.subject.rfc4514_string() == "CN=system:node:cp-1,O=system:nodes"


def test_csr_with_a_subset_of_the_sans_gets_all_of_them(authority: Authority) -> None:
    csr = make_csr(
        name=subject("kube-apiserver"),
        sans=dns_sans("kubernetes", "cp-1") + ip_sans("10.96.0.1"),
    )
    issued = authority.issue(CALLER, IssueRequest("apiserver", csr, NODE_PARAMS))
    sans = cert_sans(issued.certificate)
    assert sans is not None
    assert {"kubernetes", "cp-1", "kubernetes.default.svc.cluster.local"} <= sans[0]
    assert len(sans[1]) == 2


def test_csr_asking_for_an_extra_san_passed_in_extra_sans_is_accepted(
    authority: Authority,
) -> None:
    csr = make_csr(sans=dns_sans("etcd.example.org"))
    params = dict(NODE_PARAMS, extra_sans="etcd.example.org")
    issued = authority.issue(CALLER, IssueRequest("etcd-server", csr, params))
    sans = cert_sans(issued.certificate)
    assert sans is not None
    assert "etcd.example.org" in sans[0]


def test_csr_extensions_other_than_san_are_ignored(authority: Authority) -> None:
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
    certificate = authority.issue(CALLER, IssueRequest("admin", csr)).certificate
    assert certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    key_usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert not key_usage.key_cert_sign
    assert not key_usage.crl_sign
    eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]


# --- super-admin -------------------------------------------------------------------------


def test_super_admin_is_refused_by_default(authority: Authority, audit_path: Path) -> None:
    with pytest.raises(PermissionDenied, match="system:masters"):
        authority.issue(CALLER, IssueRequest("super-admin", make_csr()))
    (record,) = read_audit(audit_path)
    assert record["outcome"] == "refused"
    assert record["status"] == "PERMISSION_DENIED"


def test_super_admin_is_issued_when_enabled(make_authority: AuthorityFactory) -> None:
    authority = make_authority(enable_super_admin=True)
    certificate = authority.issue(CALLER, IssueRequest("super-admin", make_csr())).certificate
    organizations = certificate.subject.get_attributes_for_oid(x509.oid.NameOID.ORGANIZATION_NAME)
    assert [o.value for o in organizations] == ["system:masters"]


def test_super_admin_issuance_is_audited_as_critical(
    make_authority: AuthorityFactory, audit_path: Path
) -> None:
    authority = make_authority(enable_super_admin=True)
    authority.issue(CALLER, IssueRequest("super-admin", make_csr()))
    (record,) = read_audit(audit_path)
    assert record["event"] == "certificate.issued"
    assert record["level"] == "critical"
    assert record["system_masters"] is True


def test_ordinary_issuance_is_audited_as_info(authority: Authority, audit_path: Path) -> None:
    authority.issue(CALLER, IssueRequest("admin", make_csr()))
    (record,) = read_audit(audit_path)
    assert record["level"] == "info"
    assert record["system_masters"] is False


def test_profiles_report_super_admin_disabled_by_default(authority: Authority) -> None:
    enabled = {view.profile.name: view.enabled for view in authority.profiles(CALLER)}
    assert enabled.pop("super-admin") is False
    assert all(enabled.values())


def test_profiles_report_super_admin_enabled_when_configured(
    make_authority: AuthorityFactory,
) -> None:
    enabled = {
        v.profile.name: v.enabled for v in make_authority(enable_super_admin=True).profiles(CALLER)
    }
    assert enabled["super-admin"] is True


def test_unknown_ca_name_is_not_found(authority: Authority) -> None:
    with pytest.raises(NotFound, match="root-ca"):
        authority.ca_certificates("root-ca")


def test_ca_certificates_lists_the_three_cas(authority: Authority) -> None:
    names = sorted(ca.name for ca in authority.ca_certificates())
    assert names == ["etcd-ca", "front-proxy-ca", "kubernetes-ca"]
    assert [ca.name for ca in authority.ca_certificates("etcd-ca")] == ["etcd-ca"]
