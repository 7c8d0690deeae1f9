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
    _check_address(address, value, what)
    return address


def _check_address(address: IPAddress, text: str, what: str) -> None:
    if address.is_unspecified or address.is_multicast:
        raise InvalidArgument(f"{what}: {text} is not an address a host can be reached at")
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        raise InvalidArgument(f"{what}: {text} has a zone, which a certificate cannot name")


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
        _check_address(address, value, what)
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
    _check_address(address, host, what)
    return SubjectAltNames(ips=(address,))
