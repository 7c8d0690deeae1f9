"""An independent policy check of an issued leaf certificate.

Written from ../shared/reference/kubernetes-pki.md and issue 10, not from profiles.py:
it imports nothing of the server, so a mistake in the profiles cannot hide itself here.
It answers the question an attacker asks: is this certificate good for something it
should not be? ``violations`` lists every rule the certificate breaks; empty is good.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from datetime import timedelta

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER = {ExtendedKeyUsageOID.SERVER_AUTH}
CLIENT = {ExtendedKeyUsageOID.CLIENT_AUTH}
BOTH = SERVER | CLIENT

# profile: (issuing CA's CN, CN pattern, O set, EKUs, may carry SANs, wildcards allowed)
RULES: Mapping[str, tuple[str, str, frozenset[str], set[x509.ObjectIdentifier], bool, bool]] = {
    "apiserver": ("kubernetes", "kube-apiserver", frozenset(), SERVER, True, True),
    "apiserver-kubelet-client": (
        "kubernetes",
        "kube-apiserver-kubelet-client",
        frozenset({"kubeadm:cluster-admins"}),
        CLIENT,
        False,
        False,
    ),
    "front-proxy-client": (
        "front-proxy-ca",
        "front-proxy-client",
        frozenset(),
        CLIENT,
        False,
        False,
    ),
    "etcd-server": ("etcd-ca", "{node}", frozenset(), BOTH, True, True),
    "etcd-peer": ("etcd-ca", "{node}", frozenset(), BOTH, True, True),
    "etcd-healthcheck-client": (
        "etcd-ca",
        "kube-etcd-healthcheck-client",
        frozenset(),
        CLIENT,
        False,
        False,
    ),
    "apiserver-etcd-client": (
        "etcd-ca",
        "kube-apiserver-etcd-client",
        frozenset(),
        CLIENT,
        False,
        False,
    ),
    "admin": (
        "kubernetes",
        "kubernetes-admin",
        frozenset({"kubeadm:cluster-admins"}),
        CLIENT,
        False,
        False,
    ),
    "super-admin": (
        "kubernetes",
        "kubernetes-super-admin",
        frozenset({"system:masters"}),
        CLIENT,
        False,
        False,
    ),
    "controller-manager": (
        "kubernetes",
        "system:kube-controller-manager",
        frozenset(),
        CLIENT,
        False,
        False,
    ),
    "scheduler": ("kubernetes", "system:kube-scheduler", frozenset(), CLIENT, False, False),
    "kube-proxy": ("kubernetes", "system:kube-proxy", frozenset(), CLIENT, False, False),
    "kubelet-client": (
        "kubernetes",
        "system:node:{node}",
        frozenset({"system:nodes"}),
        CLIENT,
        False,
        False,
    ),
    "kubelet-serving": (
        "kubernetes",
        "system:node:{node}",
        frozenset({"system:nodes"}),
        SERVER,
        True,
        False,
    ),
}

# What the API server answers to, in any DNS domain, and its default service IP.
API_SERVER_FIRST_LABEL = "kubernetes"
API_SERVER_NAMES = (
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
API_SERVER_IP = ipaddress.ip_address("10.96.0.1")
MAX_LIFETIME = timedelta(days=3650)


def go_matches(pattern: str, host: str) -> bool:
    """crypto/x509's matchHostnames, restated: case-insensitive, trailing dot ignored,
    ``*`` only as the whole leftmost label, for exactly one label."""
    p = pattern.lower().rstrip(".").split(".")
    h = host.lower().rstrip(".").split(".")
    if len(p) != len(h):
        return False
    for index, (want, have) in enumerate(zip(p, h, strict=True)):
        if index == 0 and want == "*":
            continue
        if want != have:
            return False
    return True


def _same_host(a: ipaddress.IPv4Address | ipaddress.IPv6Address, b: object) -> bool:
    def four(x: object) -> object:
        if isinstance(x, ipaddress.IPv6Address) and x.ipv4_mapped is not None:
            return x.ipv4_mapped
        return x

    return four(a) == four(b)


def violations(  # noqa: PLR0912  (one branch per rule, read top to bottom)
    profile: str, certificate: x509.Certificate, node_name: str = ""
) -> list[str]:
    broken: list[str] = []
    if profile not in RULES:
        return [f"issued under unknown profile {profile!r}"]
    ca_cn, cn_pattern, orgs, ekus, may_have_sans, wildcards = RULES[profile]
    ext = certificate.extensions

    issuer_cn = certificate.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [a.value for a in issuer_cn] != [ca_cn]:
        broken.append(f"issued by {issuer_cn} instead of {ca_cn}")
    try:
        basic = ext.get_extension_for_class(x509.BasicConstraints)
        if basic.value.ca or not basic.critical:
            broken.append("BasicConstraints is not critical CA:false")
    except x509.ExtensionNotFound:
        broken.append("no BasicConstraints")
    try:
        usage = ext.get_extension_for_class(x509.KeyUsage).value
        if usage.key_cert_sign or usage.crl_sign or not usage.digital_signature:
            broken.append("KeyUsage allows signing certificates or lacks digitalSignature")
    except x509.ExtensionNotFound:
        broken.append("no KeyUsage")
    try:
        got = set(ext.get_extension_for_class(x509.ExtendedKeyUsage).value)
        if got != ekus:
            broken.append(f"EKUs {sorted(o.dotted_string for o in got)}")
    except x509.ExtensionNotFound:
        broken.append("no ExtendedKeyUsage")

    cns = [str(a.value) for a in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    want_cn = cn_pattern.format(node=node_name)
    if cns != [want_cn]:
        broken.append(f"subject CN {cns} instead of {want_cn!r}")
    got_orgs = {
        str(a.value) for a in certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    }
    if got_orgs != orgs:
        broken.append(f"subject O {sorted(got_orgs)} instead of {sorted(orgs)}")
    if "system:masters" in got_orgs and profile != "super-admin":
        broken.append("system:masters outside super-admin")

    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    if lifetime > MAX_LIFETIME:
        broken.append(f"lifetime {lifetime}")

    try:
        sans = ext.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return broken
    if not may_have_sans:
        broken.append("a client certificate with SANs")
    for name in sans:
        if isinstance(name, x509.DNSName):
            broken.extend(_dns_violations(profile, name.value, wildcards))
        elif isinstance(name, x509.IPAddress):
            broken.extend(_ip_violations(profile, name.value))
        else:
            broken.append(f"a {type(name).__name__} SAN")
    return broken


def _dns_violations(profile: str, value: str, wildcards: bool) -> list[str]:
    broken = []
    labels = value.split(".")
    if value != value.lower() or value.endswith(".") or any(not label for label in labels):
        broken.append(f"DNS SAN {value!r} is not in canonical form")
    if "*" in value and (not wildcards or labels[0] != "*" or "*" in ".".join(labels[1:])):
        broken.append(f"wildcard DNS SAN {value!r} under {profile}")
    impersonates = labels[0] == API_SERVER_FIRST_LABEL or any(
        go_matches(value, host) for host in API_SERVER_NAMES
    )
    if profile == "kubelet-serving" and impersonates:
        broken.append(f"kubelet-serving valid for the API server through {value!r}")
    return broken


def _ip_violations(profile: str, value: object) -> list[str]:
    broken = []
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return [f"an IP network SAN {value}"]
    assert isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address)
    if value.is_unspecified or value.is_multicast:
        broken.append(f"IP SAN {value} is not a unicast host address")
    if isinstance(value, ipaddress.IPv6Address) and value.ipv4_mapped is not None:
        broken.append(f"IP SAN {value} is an IPv4-mapped form")
        if value.ipv4_mapped.is_unspecified or value.ipv4_mapped.is_multicast:
            broken.append(f"IP SAN {value} maps to a non-unicast address")
    if profile == "kubelet-serving" and _same_host(value, API_SERVER_IP):  # type: ignore[arg-type]
        broken.append(f"kubelet-serving valid for the API server's service IP through {value}")
    return broken
