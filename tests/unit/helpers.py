"""Helpers for the unit tests: leaf keys, CSRs, audit records, and kubeadm's expectations."""

from __future__ import annotations

import functools
import ipaddress
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LeafKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
IP = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network

SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH


@functools.cache
def p256_key() -> ec.EllipticCurvePrivateKey:
    """One P-256 leaf key for the whole run; a CSR's key may be reused freely."""
    return ec.generate_private_key(ec.SECP256R1())


@functools.cache
def rsa_key(bits: int = 2048, exponent: int = 65537) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=exponent, key_size=bits)


def subject(common_name: str | None = None, *organizations: str) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    if common_name is not None:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def make_csr(
    key: Any | None = None,
    name: x509.Name | None = None,
    sans: Sequence[x509.GeneralName] | None = None,
    extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
    *,
    der: bool = False,
) -> bytes:
    """A signed CSR: PEM by default. ``key`` may be any key cryptography can sign with."""
    key = key if key is not None else p256_key()
    builder = x509.CertificateSigningRequestBuilder().subject_name(name or x509.Name([]))
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    algorithm = None if _signs_without_hash(key) else hashes.SHA256()
    csr = builder.sign(key, algorithm)
    encoding = serialization.Encoding.DER if der else serialization.Encoding.PEM
    return csr.public_bytes(encoding)


def _signs_without_hash(key: Any) -> bool:
    from cryptography.hazmat.primitives.asymmetric import ed448, ed25519

    return isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)


def der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _der_element(der: bytes, offset: int) -> tuple[int, int]:
    """(content start, end) of the DER element that begins at ``offset``."""
    length = der[offset + 1]
    start = offset + 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(der[start : start + count], "big")
        start += count
    return start, start + length


def der_children(der: bytes) -> list[bytes]:
    """The encoded elements inside the outer SEQUENCE of ``der`` (a CSR: the request
    body, the signature algorithm, the signature)."""
    offset, end = _der_element(der, 0)
    children = []
    while offset < end:
        _, child_end = _der_element(der, offset)
        children.append(der[offset:child_end])
        offset = child_end
    return children


def der_sequence(children: Sequence[bytes]) -> bytes:
    body = b"".join(children)
    return b"\x30" + der_length(len(body)) + body


def der_bit_string(data: bytes) -> bytes:
    return b"\x03" + der_length(len(data) + 1) + b"\x00" + data


def dns_sans(*names: str) -> list[x509.GeneralName]:
    return [x509.DNSName(n) for n in names]


def ip_sans(*addresses: str) -> list[x509.GeneralName]:
    return [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]


def read_audit(path: Path) -> list[dict[str, Any]]:
    """Every record in an audit log, each line parsed on its own as JSON."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def cert_sans(certificate: x509.Certificate) -> tuple[set[str], set[IP | IPNet]] | None:
    """(DNS names, IPs) of a certificate, or None when it has no SAN extension."""
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    san = extension.value
    return set(san.get_values_for_type(x509.DNSName)), set(san.get_values_for_type(x509.IPAddress))


def ips(*addresses: str) -> set[IP | IPNet]:
    return {ipaddress.ip_address(a) for a in addresses}


def subject_attributes(name: x509.Name) -> list[tuple[str, str]]:
    return sorted((a.oid.dotted_string, str(a.value)) for a in name)


class HookedKey(ec.EllipticCurvePrivateKey):
    """A CA key that calls ``hook`` before each signature it makes (to count them, to
    block, or to fail as an HSM can), and is otherwise the key it wraps. Like an HSM
    key object, it signs and nothing else."""

    def __init__(self, inner: Any, hook: Callable[[], None] = lambda: None) -> None:
        assert isinstance(inner, ec.EllipticCurvePrivateKey)
        self._inner = inner
        self._hook = hook

    def sign(self, data: Any, signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        self._hook()
        return self._inner.sign(data, signature_algorithm)

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._inner.public_key()

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._inner.curve

    @property
    def key_size(self) -> int:
        return self._inner.key_size

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        raise TypeError("sign-only")

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        raise TypeError("not extractable")

    def private_bytes(self, *args: Any, **kwargs: Any) -> bytes:
        raise TypeError("not extractable")

    def __copy__(self) -> HookedKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> HookedKey:
        return self


# Parameters that satisfy each profile, and the certificate kubeadm would make from them
# (../shared/reference/kubernetes-pki.md): CA, CN, O, EKU, SANs.
NODE = "cp-1"
ADVERTISE = "192.168.10.21"
NODE_PARAMS = {"node_name": NODE, "advertise_address": ADVERTISE}

PROFILE_PARAMS: dict[str, dict[str, str]] = {
    "apiserver": NODE_PARAMS,
    "etcd-server": NODE_PARAMS,
    "etcd-peer": NODE_PARAMS,
    "kubelet-client": {"node_name": NODE},
    "kubelet-serving": NODE_PARAMS,
}

APISERVER_DNS = {
    NODE,
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
}
ETCD_SANS = ({NODE, "localhost"}, ips(ADVERTISE, "127.0.0.1", "::1"))

# profile: (CA, CN, O, EKU in order, SANs or None for no SAN extension)
KUBEADM: dict[str, tuple[str, str, tuple[str, ...], tuple[x509.ObjectIdentifier, ...], Any]] = {
    "apiserver": (
        "kubernetes-ca",
        "kube-apiserver",
        (),
        (SERVER_AUTH,),
        (APISERVER_DNS, ips("10.96.0.1", ADVERTISE)),
    ),
    "apiserver-kubelet-client": (
        "kubernetes-ca",
        "kube-apiserver-kubelet-client",
        ("kubeadm:cluster-admins",),
        (CLIENT_AUTH,),
        None,
    ),
    "front-proxy-client": ("front-proxy-ca", "front-proxy-client", (), (CLIENT_AUTH,), None),
    "etcd-server": ("etcd-ca", NODE, (), (SERVER_AUTH, CLIENT_AUTH), ETCD_SANS),
    "etcd-peer": ("etcd-ca", NODE, (), (SERVER_AUTH, CLIENT_AUTH), ETCD_SANS),
    "etcd-healthcheck-client": (
        "etcd-ca",
        "kube-etcd-healthcheck-client",
        (),
        (CLIENT_AUTH,),
        None,
    ),
    "apiserver-etcd-client": (
        "etcd-ca",
        "kube-apiserver-etcd-client",
        (),
        (CLIENT_AUTH,),
        None,
    ),
    "admin": (
        "kubernetes-ca",
        "kubernetes-admin",
        ("kubeadm:cluster-admins",),
        (CLIENT_AUTH,),
        None,
    ),
    "super-admin": (
        "kubernetes-ca",
        "kubernetes-super-admin",
        ("system:masters",),
        (CLIENT_AUTH,),
        None,
    ),
    "controller-manager": (
        "kubernetes-ca",
        "system:kube-controller-manager",
        (),
        (CLIENT_AUTH,),
        None,
    ),
    "scheduler": ("kubernetes-ca", "system:kube-scheduler", (), (CLIENT_AUTH,), None),
    "kube-proxy": ("kubernetes-ca", "system:kube-proxy", (), (CLIENT_AUTH,), None),
    "kubelet-client": (
        "kubernetes-ca",
        f"system:node:{NODE}",
        ("system:nodes",),
        (CLIENT_AUTH,),
        None,
    ),
    "kubelet-serving": (
        "kubernetes-ca",
        f"system:node:{NODE}",
        ("system:nodes",),
        (SERVER_AUTH,),
        ({NODE}, ips(ADVERTISE)),
    ),
}
