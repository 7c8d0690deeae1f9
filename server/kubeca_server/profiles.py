"""What each kind of certificate must look like, and which inputs it takes.

Pure data and pure functions: from (profile, validated inputs, public key, issuer)
to a certificate template. No I/O, no grpc. The shapes follow kubeadm exactly
(../shared/reference/kubernetes-pki.md), with two deliberate improvements: leaves
carry SubjectKeyIdentifier and AuthorityKeyIdentifier, and keyEncipherment is set
only for RSA keys (RFC 5480).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kubeca_client.authorities import ETCD_CA, FRONT_PROXY_CA, KUBERNETES_CA, SERVICE_CA
from kubeca_client.errors import InvalidArgument
from kubeca_client.names import (
    IPAddress,
    IPNetwork,
    SubjectAltNames,
)
from kubeca_client.parameters import parse_parameter

SYSTEM_MASTERS = "system:masters"
BACKDATE = timedelta(minutes=5)
# The CSR API's floor; anything shorter cannot be renewed before it expires.
MIN_LIFETIME = timedelta(minutes=10)
MAX_COMMON_NAME = 64  # RFC 5280's ub-common-name

LeafPublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


@dataclass(frozen=True)
class Parameter:
    name: str
    description: str
    default: str = ""


# Every profile uses the same names for the same things.
NODE_NAME = Parameter("node_name", "the node's name, a DNS-1123 subdomain")
ADVERTISE_ADDRESS = Parameter("advertise_address", "the node's advertised IP address")
CONTROL_PLANE_ENDPOINT = Parameter(
    "control_plane_endpoint", "the shared API endpoint, HOST or HOST:PORT (its host becomes a SAN)"
)
SERVICE_CIDR = Parameter(
    "service_cidr",
    "the service network (or a dual-stack pair); the first one's first address becomes a SAN",
    "10.96.0.0/12",
)
DNS_DOMAIN = Parameter("dns_domain", "the cluster's DNS domain", "cluster.local")
EXTRA_SANS = Parameter("extra_sans", "more SANs, comma-separated: IPs, DNS names or *.wildcards")


NO_SANS = SubjectAltNames()
DEFAULT_SERVICE_CIDR = ipaddress.IPv4Network(SERVICE_CIDR.default)


@dataclass(frozen=True)
class Inputs:
    """A profile's parameters after validation. Absent optional ones are None."""

    node_name: str | None = None
    advertise_address: IPAddress | None = None
    control_plane_endpoint: SubjectAltNames = NO_SANS
    service_cidr: IPNetwork = DEFAULT_SERVICE_CIDR
    dns_domain: str = DNS_DOMAIN.default
    extra_sans: SubjectAltNames = NO_SANS

    def require_node_name(self) -> str:
        assert self.node_name is not None, "parse_inputs enforces required parameters"
        return self.node_name


def _apiserver_sans(i: Inputs) -> SubjectAltNames:
    domain = i.dns_domain
    dns = [
        i.require_node_name(),
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        f"kubernetes.default.svc.{domain}",
    ]
    # kubeadm's GetAPIServerVirtualIP: the first host address of the service network.
    first_service_ip = i.service_cidr.network_address + 1
    ips: list[IPAddress] = [first_service_ip]
    if i.advertise_address:
        ips.append(i.advertise_address)
    return SubjectAltNames.of(dns, ips) | i.control_plane_endpoint | i.extra_sans


def _etcd_sans(i: Inputs) -> SubjectAltNames:
    ips: list[IPAddress] = ([i.advertise_address] if i.advertise_address else []) + [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    return SubjectAltNames.of([i.require_node_name(), "localhost"], ips) | i.extra_sans


def _kubelet_serving_sans(i: Inputs) -> SubjectAltNames:
    ips: list[IPAddress] = [i.advertise_address] if i.advertise_address else []
    sans = SubjectAltNames.of([i.require_node_name()], ips) | i.extra_sans
    # Every pod and kubelet trusts kubernetes-ca: a node's serving certificate must not
    # also be valid for the API server's names or its service address.
    for name in sans.dns:
        if name == "kubernetes" or name.startswith("kubernetes."):
            raise InvalidArgument(f"kubelet-serving may not name the API server ({name!r})")
    if DEFAULT_SERVICE_CIDR.network_address + 1 in sans.ips:
        raise InvalidArgument("kubelet-serving may not name the API server's service address")
    return sans


def _no_sans(i: Inputs) -> SubjectAltNames:
    return SubjectAltNames()


@dataclass(frozen=True)
class Profile:
    name: str
    authority: str
    common_name: str  # may name {node_name}
    organizations: tuple[str, ...]
    extended_key_usages: tuple[x509.ObjectIdentifier, ...]
    required: tuple[Parameter, ...]
    optional: tuple[Parameter, ...]
    san_rule: str
    sans: Callable[[Inputs], SubjectAltNames] = _no_sans

    @property
    def parameters(self) -> tuple[Parameter, ...]:
        return self.required + self.optional

    @property
    def grants_system_masters(self) -> bool:
        return SYSTEM_MASTERS in self.organizations

    def subject(self, inputs: Inputs) -> x509.Name:
        common_name = self.common_name.format(node_name=inputs.node_name)
        if len(common_name) > MAX_COMMON_NAME:
            raise InvalidArgument(
                f"the common name {common_name[:40]!r}... would be {len(common_name)} "
                f"characters; X.509 allows {MAX_COMMON_NAME} (use a shorter node_name)"
            )
        attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in self.organizations]
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        return x509.Name(attributes)


SERVER = (ExtendedKeyUsageOID.SERVER_AUTH,)
CLIENT = (ExtendedKeyUsageOID.CLIENT_AUTH,)
SERVER_CLIENT = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)
EKU_NAMES: Mapping[x509.ObjectIdentifier, str] = {
    ExtendedKeyUsageOID.SERVER_AUTH: "server_auth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "client_auth",
}
LEAF_KEY_USAGES = ("digital_signature", "key_encipherment (RSA keys only)")
ETCD_SAN_RULE = "DNS: node_name, localhost; IP: advertise_address, 127.0.0.1, ::1; + extra_sans"


def _client(name: str, authority: str, cn: str, *orgs: str) -> Profile:
    return Profile(name, authority, cn, orgs, CLIENT, (), (), "none")


PROFILES: Mapping[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            "apiserver",
            KUBERNETES_CA,
            "kube-apiserver",
            (),
            SERVER,
            (NODE_NAME, ADVERTISE_ADDRESS),
            (CONTROL_PLANE_ENDPOINT, SERVICE_CIDR, DNS_DOMAIN, EXTRA_SANS),
            "DNS: node_name, kubernetes, kubernetes.default, kubernetes.default.svc, "
            "kubernetes.default.svc.<dns_domain>; IP: first address of service_cidr, "
            "advertise_address; + control_plane_endpoint host, extra_sans",
            _apiserver_sans,
        ),
        _client(
            "apiserver-kubelet-client",
            KUBERNETES_CA,
            "kube-apiserver-kubelet-client",
            "kubeadm:cluster-admins",
        ),
        _client("front-proxy-client", FRONT_PROXY_CA, "front-proxy-client"),
        Profile(
            "etcd-server",
            ETCD_CA,
            "{node_name}",
            (),
            SERVER_CLIENT,
            (NODE_NAME, ADVERTISE_ADDRESS),
            (EXTRA_SANS,),
            ETCD_SAN_RULE,
            _etcd_sans,
        ),
        Profile(
            "etcd-peer",
            ETCD_CA,
            "{node_name}",
            (),
            SERVER_CLIENT,
            (NODE_NAME, ADVERTISE_ADDRESS),
            (EXTRA_SANS,),
            ETCD_SAN_RULE,
            _etcd_sans,
        ),
        _client("etcd-healthcheck-client", ETCD_CA, "kube-etcd-healthcheck-client"),
        _client("apiserver-etcd-client", ETCD_CA, "kube-apiserver-etcd-client"),
        _client("admin", KUBERNETES_CA, "kubernetes-admin", "kubeadm:cluster-admins"),
        _client("super-admin", KUBERNETES_CA, "kubernetes-super-admin", SYSTEM_MASTERS),
        _client("controller-manager", KUBERNETES_CA, "system:kube-controller-manager"),
        _client("scheduler", KUBERNETES_CA, "system:kube-scheduler"),
        _client("kube-proxy", KUBERNETES_CA, "system:kube-proxy"),
        Profile(
            "kubelet-client",
            KUBERNETES_CA,
            "system:node:{node_name}",
            ("system:nodes",),
            CLIENT,
            (NODE_NAME,),
            (),
            "none",
        ),
        Profile(
            "kubelet-serving",
            KUBERNETES_CA,
            "system:node:{node_name}",
            ("system:nodes",),
            SERVER,
            (NODE_NAME,),
            (ADVERTISE_ADDRESS, EXTRA_SANS),
            "DNS: node_name; IP: advertise_address; + extra_sans",
            _kubelet_serving_sans,
        ),
    )
}


def parse_inputs(profile: Profile, parameters: Mapping[str, str]) -> Inputs:
    """Validate ``parameters`` against what ``profile`` declares."""
    declared = {p.name for p in profile.parameters}
    for name in sorted(parameters):
        if name not in declared:
            takes = ", ".join(sorted(declared)) or "no parameters"
            raise InvalidArgument(
                f"profile {profile.name} does not take parameter {name[:64]!r} (it takes: {takes})"
            )
    for parameter in profile.required:
        if not parameters.get(parameter.name, "").strip():
            raise InvalidArgument(
                f"profile {profile.name} needs parameter {parameter.name} ({parameter.description})"
            )
    values: dict[str, object] = {}
    for name, value in parameters.items():
        # Every declared parameter has a parser there (tests/unit/test_profiles.py).
        parsed = parse_parameter(name, value)
        if parsed is not None:
            values[name] = parsed
    return Inputs(**values)  # type: ignore[arg-type]  # names checked against the profile


@dataclass(frozen=True)
class Issuer:
    """What a certificate takes from the CA generation that signs it."""

    name: x509.Name
    key_identifier: bytes  # the CA certificate's SubjectKeyIdentifier
    not_after: datetime

    @property
    def authority_key_identifier(self) -> x509.AuthorityKeyIdentifier:
        return x509.AuthorityKeyIdentifier(self.key_identifier, None, None)


def validity(now: datetime, lifetime: timedelta, issuer: Issuer) -> tuple[datetime, datetime]:
    """NotBefore backdated for clock skew; NotAfter never past the CA's."""
    return now - BACKDATE, min(now + lifetime, issuer.not_after)


def build_leaf(
    profile: Profile,
    inputs: Inputs,
    public_key: LeafPublicKey,
    issuer: Issuer,
    serial: int,
    now: datetime,
    lifetime: timedelta,
) -> x509.CertificateBuilder:
    not_before, not_after = validity(now, lifetime, issuer)
    builder = (
        x509.CertificateBuilder()
        .subject_name(profile.subject(inputs))
        .issuer_name(issuer.name)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(list(profile.extended_key_usages)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(issuer.authority_key_identifier, critical=False)
    )
    sans = profile.sans(inputs)
    if sans:
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in sans.dns]
        names.extend(x509.IPAddress(ip) for ip in sans.ips)
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder


def build_ca(
    common_name: str,
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
    serial: int,
    now: datetime,
    lifetime: timedelta,
    issuer: Issuer | None = None,
) -> x509.CertificateBuilder:
    """A CA: CA:true critical, keyCertSign|cRLSign critical, SKI. Self-signed (a root)
    unless ``issuer`` is given: then a cross-certificate for the same key, signed by
    ``issuer`` (an older generation), so clients trusting only that one accept it."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    own_key_id = x509.SubjectKeyIdentifier.from_public_key(public_key)
    authority = (
        issuer.authority_key_identifier
        if issuer is not None
        else x509.AuthorityKeyIdentifier(own_key_id.digest, None, None)
    )
    not_after = now + lifetime if issuer is None else min(now + lifetime, issuer.not_after)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.name if issuer is not None else name)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                key_encipherment=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(own_key_id, critical=False)
        .add_extension(authority, critical=False)
    )


# The service's own certificates, signed by the service CA. Not in PROFILES: no
# request can name them, and the cluster never trusts their CA.
SERVICE_SERVER = Profile(
    "kubeca-server",
    SERVICE_CA,
    "kubeca-server",
    (),
    SERVER,
    (),
    (EXTRA_SANS,),
    "the configured server names",
    lambda i: i.extra_sans,
)
OPERATOR = Profile(
    "kubeca-operator",
    SERVICE_CA,
    "{node_name}",  # the operator identity's name
    ("kubeca:operators",),
    CLIENT,
    (NODE_NAME,),
    (),
    "none",
)
