"""Parsing of the names and addresses a request may carry.

Each parser refuses what it cannot accept with an ``InvalidArgument`` that names the
parameter and the value, so a caller can fix the request without reading our code.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from kubeca_client.errors import InvalidArgument

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
MAX_SANS = 100


def is_dns1123_subdomain(value: str) -> bool:
    """Kubernetes' rule for node and DNS names: lower-case RFC 1123 labels, 253 chars."""
    if not value or len(value) > 253:
        return False
    return all(_LABEL.fullmatch(label) for label in value.split("."))


def _show(value: str) -> str:
    # Hostile input may be huge or full of control characters; show a safe excerpt.
    text = value if len(value) <= 80 else value[:77] + "..."
    return repr(text)


def parse_dns_name(value: str, what: str) -> str:
    if not is_dns1123_subdomain(value):
        raise InvalidArgument(
            f"{what}: {_show(value)} is not a valid DNS-1123 subdomain "
            "(lower-case letters, digits, '-' and '.', at most 253 characters)"
        )
    return value


def parse_ip(value: str, what: str) -> IPAddress:
    """A unicast address a certificate can meaningfully name."""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise InvalidArgument(f"{what}: {_show(value)} is not an IP address") from None
    check_address(address, what)
    return address


def canonical_ip(address: IPAddress) -> IPAddress:
    """The address as TLS clients compare it: Go's net.IP.Equal (used by crypto/x509)
    takes ``::ffff:a.b.c.d`` to be the IPv4 address ``a.b.c.d``."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def check_address(address: IPAddress, what: str) -> None:
    """The one IP policy, for every place an address enters (parameters, token
    addresses, server names, the service network's first address, the pki client):
    unicast, no zone, and written the one way, so no form of an address slips past a
    rule written for another form of it."""
    text = str(address)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        raise InvalidArgument(
            f"{what}: {text} is an IPv4-mapped IPv6 address; TLS clients take it for "
            f"{address.ipv4_mapped}, so write {address.ipv4_mapped}"
        )
    if address.is_unspecified or address.is_multicast:
        raise InvalidArgument(f"{what}: {text} is not an address a host can be reached at")
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        raise InvalidArgument(f"{what}: {text} has a zone, which a certificate cannot name")


def service_address(network: IPNetwork, what: str) -> IPAddress:
    """kubeadm's GetAPIServerVirtualIP: the first host address of the service network,
    held to the same policy as any other address a certificate names."""
    address = network.network_address + 1
    check_address(address, f"{what} (its first address, the API server's service IP)")
    return address


def _dns_form(name: str) -> str:
    # How crypto/x509 compares: case-insensitive, a trailing dot ignored.
    return name.lower().removesuffix(".")


def dns_matches(pattern: str, host: str) -> bool:
    """Whether a certificate naming ``pattern`` is valid for ``host``, as Go's
    crypto/x509 (kubectl, kubelets, controllers) decides: a ``*`` only as the whole
    leftmost label, standing for exactly one label."""
    pattern, host = _dns_form(pattern), _dns_form(host)
    if not pattern or not host:
        return False
    if pattern == host:
        return True
    pattern_labels, host_labels = pattern.split("."), host.split(".")
    if pattern_labels[0] != "*" or len(pattern_labels) != len(host_labels):
        return False
    return (
        len(pattern_labels) > 1 and pattern_labels[1:] == host_labels[1:] and host_labels[0] != ""
    )


def ip_matches(named: IPAddress, address: IPAddress) -> bool:
    """Whether a certificate naming ``named`` is valid for ``address`` (net.IP.Equal)."""
    return canonical_ip(named) == canonical_ip(address)


def covers(sans: SubjectAltNames, dns: Sequence[str], ips: Sequence[IPAddress]) -> list[str]:
    """Which of the names ``dns`` and addresses ``ips`` a certificate with ``sans``
    would be accepted for by a TLS client; empty if none."""
    hits = [h for h in dns if any(dns_matches(p, h) for p in sans.dns)]
    hits.extend(str(a) for a in ips if any(ip_matches(n, a) for n in sans.ips))
    return hits


def parse_cidr(value: str, what: str) -> IPNetwork:
    """A network with an explicit prefix length and room for at least one host."""
    try:
        if "/" not in value:
            raise ValueError(value)
        network = ipaddress.ip_network(value, strict=True)
    except ValueError:
        raise InvalidArgument(
            f"{what}: {_show(value)} is not a network in CIDR form, e.g. 10.96.0.0/12"
        ) from None
    if network.num_addresses < 2:
        raise InvalidArgument(f"{what}: {value} has no address after the network address")
    return network


@dataclass(frozen=True)
class SubjectAltNames:
    """DNS names and IP addresses, deduplicated; DNS names sorted as kubeadm does."""

    dns: tuple[str, ...] = ()
    ips: tuple[IPAddress, ...] = ()

    def __or__(self, other: SubjectAltNames) -> SubjectAltNames:
        ips = list(self.ips)
        ips.extend(ip for ip in other.ips if ip not in ips)
        return SubjectAltNames(tuple(sorted(set(self.dns) | set(other.dns))), tuple(ips))

    @classmethod
    def of(cls, dns: Sequence[str] = (), ips: Sequence[IPAddress] = ()) -> SubjectAltNames:
        return cls() | cls(tuple(dns), tuple(ips))

    def __bool__(self) -> bool:
        return bool(self.dns or self.ips)


def parse_san(value: str, what: str) -> SubjectAltNames:
    """One extra SAN: an IP, a DNS-1123 subdomain, or a wildcard ``*.`` + subdomain."""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        check_address(address, what)
        return SubjectAltNames(ips=(address,))
    name = value.removeprefix("*.")
    if is_dns1123_subdomain(name):
        return SubjectAltNames(dns=(value,))
    raise InvalidArgument(
        f"{what}: {_show(value)} is neither an IP address, a DNS-1123 subdomain "
        "nor a wildcard DNS name (*.example.com)"
    )


def parse_san_list(value: str, what: str) -> SubjectAltNames:
    """A comma-separated list of extra SANs; empty items are ignored."""
    items = [item.strip() for item in value.split(",") if item.strip()]
    if len(items) > MAX_SANS:
        raise InvalidArgument(f"{what}: at most {MAX_SANS} names, got {len(items)}")
    result = SubjectAltNames()
    for item in items:
        result = result | parse_san(item, what)
    return result


def parse_endpoint_host(value: str, what: str) -> SubjectAltNames:
    """The host of HOST, HOST:PORT, [IPv6] or [IPv6]:PORT, as a SAN."""
    port: str | None = None
    if value.startswith("["):
        host, closed, rest = value[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise InvalidArgument(f"{what}: {_show(value)} is not HOST[:PORT]")
        port = rest[1:] if rest else None
    elif value.count(":") == 1:
        host, port = value.split(":")
    else:
        host = value  # a plain name, or a bare IPv6 address
    if port is not None and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise InvalidArgument(f"{what}: {_show(value)} has an invalid port")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return SubjectAltNames(dns=(parse_dns_name(host, what),))
    check_address(address, what)
    return SubjectAltNames(ips=(address,))
