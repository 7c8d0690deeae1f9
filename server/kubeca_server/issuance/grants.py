"""Who may ask for what: an operator identity's grant, checked against a request.

Every refusal names the rule that refused, so an operator can fix the grant or the
request. A wildcard never reaches a profile that grants system:masters: that needs
its name, written out.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from datetime import timedelta

from kubeca_client.errors import PermissionDenied
from kubeca_client.names import SubjectAltNames

from kubeca_server.config import Grant
from kubeca_server.profiles import DEFAULT_SERVICE_CIDR, Inputs, Profile

# Names every certificate of a profile carries whatever the caller asks: they need no
# grant. Anything else in a certificate came from the caller's parameters.
FIXED_DNS = frozenset(
    {
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        "localhost",
    }
)
FIXED_IPS = frozenset(
    {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
        DEFAULT_SERVICE_CIDR.network_address + 1,
    }
)


def allows_profile(grant: Grant, profile: Profile) -> bool:
    if profile.name in grant.profiles:
        return True
    return "*" in grant.profiles and not profile.grants_system_masters


def _dns_allowed(grant: Grant, name: str) -> bool:
    for rule in grant.san_dns:
        if rule in ("*", name):
            return True
        if rule.startswith(".") and name.endswith(rule) and len(name) > len(rule):
            return True
    return False


def check_profile(grant: Grant, profile: Profile) -> None:
    if not allows_profile(grant, profile):
        hint = (
            " (system:masters profiles must be named in the grant; '*' does not cover them)"
            if profile.grants_system_masters and "*" in grant.profiles
            else ""
        )
        raise PermissionDenied(
            f"grant {grant.identity!r} does not allow profile {profile.name}{hint}"
        )


def check_node(grant: Grant, node_name: str) -> None:
    if not any(fnmatch.fnmatchcase(node_name, pattern) for pattern in grant.node_names):
        raise PermissionDenied(
            f"grant {grant.identity!r} does not allow node name {node_name!r} "
            f"(node_names: {', '.join(grant.node_names) or 'none'})"
        )


def check_names(grant: Grant, sans: SubjectAltNames, inputs: Inputs) -> None:
    """Every SAN must be one the grant allows, unless the profile itself put it there."""
    who = f"grant {grant.identity!r}"
    # A fixed name needs no grant only when the profile put it there; the same name
    # asked for through a parameter is the caller's choice and is checked like any other.
    supplied = inputs.extra_sans | inputs.control_plane_endpoint
    supplied_ips = set(supplied.ips) | (
        {inputs.advertise_address} if inputs.advertise_address else set()
    )
    for name in sans.dns:
        if (name in FIXED_DNS and name not in supplied.dns) or name == inputs.node_name:
            continue
        if not _dns_allowed(grant, name):
            raise PermissionDenied(
                f"{who} does not allow DNS SAN {name!r} (san_dns: "
                f"{', '.join(grant.san_dns) or 'none'})"
            )
    for ip in sans.ips:
        if ip in FIXED_IPS and ip not in supplied_ips:
            continue
        if not any(ip in network for network in grant.san_cidrs):
            raise PermissionDenied(
                f"{who} does not allow IP SAN {ip} (san_cidrs: "
                f"{', '.join(map(str, grant.san_cidrs)) or 'none'})"
            )


def check_lifetime(grant: Grant, lifetime: timedelta) -> None:
    if lifetime > grant.max_lifetime:
        raise PermissionDenied(
            f"grant {grant.identity!r} allows lifetimes up to {grant.max_lifetime.days} days, "
            f"not {lifetime.total_seconds() / 86400:.2f}"
        )


def check_request(
    grant: Grant, profile: Profile, inputs: Inputs, sans: SubjectAltNames, lifetime: timedelta
) -> None:
    """Raise PermissionDenied, naming the rule, unless the grant covers the request."""
    check_profile(grant, profile)
    if inputs.node_name is not None:
        check_node(grant, inputs.node_name)
    check_names(grant, sans, inputs)
    check_lifetime(grant, lifetime)
