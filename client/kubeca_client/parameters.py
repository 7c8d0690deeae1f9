"""Profile parameters by kind: the one parser for each, shared by the server (which
decides) and the Terraform provider (which says at plan time what the server would say).

Which profile takes which parameter comes from the service (ListProfiles); what a
parameter of a given name must look like is fixed, and lives here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from kubeca_client.errors import InvalidArgument
from kubeca_client.names import (
    parse_cidr,
    parse_dns_name,
    parse_endpoint_host,
    parse_ip,
    parse_san_list,
)

MAX_PARAMETER_LENGTH = 4096


def _service_cidr(value: str, what: str) -> object:
    # kubeadm takes a dual-stack pair and the apiserver's address from the first.
    parts = value.split(",")
    if len(parts) > 2:
        raise InvalidArgument(f"{what}: at most two networks (one per IP family)")
    networks = [parse_cidr(part.strip(), what) for part in parts]
    return networks[0]


PARSERS: Mapping[str, Callable[[str, str], object]] = {
    "node_name": parse_dns_name,
    "advertise_address": parse_ip,
    "control_plane_endpoint": parse_endpoint_host,
    "service_cidr": _service_cidr,
    "dns_domain": parse_dns_name,
    "extra_sans": parse_san_list,
}


def parse_parameter(name: str, value: str) -> object | None:
    """The parsed value of parameter ``name``, None when blank (the profile's default);
    InvalidArgument naming it if malformed. KeyError for a name no profile declares:
    callers check names against the profile first."""
    if len(value) > MAX_PARAMETER_LENGTH:
        raise InvalidArgument(f"parameter {name} is longer than {MAX_PARAMETER_LENGTH} characters")
    if not value.strip():
        return None
    return PARSERS[name](value.strip(), f"parameter {name}")
