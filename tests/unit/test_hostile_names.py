"""Issue 10, defects 1, 2 and 8: untrusted bytes never become INTERNAL, a kubelet-serving
certificate is never valid for the API server as a TLS client matches names, and one IP
policy holds wherever an address enters."""

from __future__ import annotations

import ipaddress

import pytest
from cryptography import x509
from kubeca_client.errors import InvalidArgument, KubecaError
from kubeca_client.names import (
    SubjectAltNames,
    covers,
    dns_matches,
    ip_matches,
    parse_endpoint_host,
    parse_ip,
    parse_san,
)
from kubeca_server.csr import parse_csr
from kubeca_server.profiles import PROFILES, parse_inputs

from tests.unit.conftest import World, WorldFactory, grant, issue
from tests.unit.helpers import make_csr

# --- defect 1: a CSR version other than 0 ---------------------------------------------


def _with_version(version: int) -> bytes:
    der = bytearray(make_csr(der=True))
    # CertificationRequestInfo opens with INTEGER 0 (02 01 00): the version.
    at = der.index(bytes.fromhex("020100"))
    der[at + 2] = version
    return bytes(der)


@pytest.mark.parametrize("version", [1, 2, 0x7F])
def test_a_csr_whose_version_is_not_0_is_invalid_argument(version: int) -> None:
    with pytest.raises(InvalidArgument, match="version"):
        parse_csr(_with_version(version))


def test_a_csr_whose_version_is_not_0_is_refused_by_the_pipeline(world: World) -> None:
    with pytest.raises(InvalidArgument, match="version field other than 0"):
        issue(world, "admin", csr=_with_version(1))


def test_every_single_bit_flip_of_a_csr_is_refused_or_accepted_never_internal() -> None:
    der = make_csr(der=True)
    for index in range(len(der)):
        for bit in range(8):
            flipped = bytearray(der)
            flipped[index] ^= 1 << bit
            try:
                parse_csr(bytes(flipped))
            except InvalidArgument:
                pass
            except KubecaError as exc:  # pragma: no cover - the failure being named
                pytest.fail(f"byte {index} bit {bit}: {exc.status}")


# --- defect 2: names matched as TLS clients match them ------------------------------


@pytest.mark.parametrize(
    ("pattern", "host", "matches"),
    [
        ("*.default.svc.cluster.local", "kubernetes.default.svc.cluster.local", True),
        ("*.default.svc", "kubernetes.default.svc", True),
        ("*.default", "kubernetes.default", True),
        ("*.DEFAULT.svc.", "kubernetes.default.svc", True),
        ("Kubernetes.Default.", "kubernetes.default", True),
        ("*.svc.cluster.local", "kubernetes.default.svc.cluster.local", False),  # one label
        ("*", "kubernetes", False),
        ("kube*.default", "kubernetes.default", False),  # only a whole leftmost label
        ("*.default", "default", False),
    ],
)
def test_dns_matches_as_go_crypto_x509(pattern: str, host: str, matches: bool) -> None:
    assert dns_matches(pattern, host) is matches


def test_an_ipv4_mapped_address_matches_its_ipv4_form() -> None:
    assert ip_matches(ipaddress.ip_address("::ffff:10.96.0.1"), ipaddress.ip_address("10.96.0.1"))
    assert not ip_matches(ipaddress.ip_address("::10.96.0.1"), ipaddress.ip_address("10.96.0.1"))


def test_covers_names_what_a_san_set_is_valid_for() -> None:
    sans = SubjectAltNames.of(["*.default.svc"], [ipaddress.ip_address("10.0.0.1")])
    assert covers(sans, ["kubernetes.default.svc", "x.y"], [ipaddress.ip_address("10.0.0.1")]) == [
        "kubernetes.default.svc",
        "10.0.0.1",
    ]


KUBELET_SERVING = PROFILES["kubelet-serving"]


@pytest.mark.parametrize(
    "extra",
    [
        "*.default.svc.cluster.local",
        "*.default.svc",
        "*.default",
        "*.default.svc.corp.example",
        "::ffff:10.96.0.1",
        "10.96.0.1",
        "kubernetes.default.svc.corp.example",
    ],
)
def test_kubelet_serving_is_never_valid_for_the_api_server(extra: str) -> None:
    params = {"node_name": "node-1", "extra_sans": extra}
    with pytest.raises(InvalidArgument):
        KUBELET_SERVING.sans(parse_inputs(KUBELET_SERVING, params))


def test_kubelet_serving_refuses_the_mapped_service_ip_as_advertise_address() -> None:
    params = {"node_name": "node-1", "advertise_address": "::ffff:10.96.0.1"}
    with pytest.raises(InvalidArgument, match="IPv4-mapped"):
        KUBELET_SERVING.sans(parse_inputs(KUBELET_SERVING, params))


def test_a_narrow_grant_cannot_get_an_api_server_wildcard(make_world: WorldFactory) -> None:
    narrow = grant(
        "narrow", profiles=frozenset({"kubelet-serving"}), san_dns=(".svc.cluster.local",)
    )
    world = make_world(grants={narrow.identity: narrow})
    from kubeca_server.issuance.model import Caller

    params = {"node_name": "node-1", "extra_sans": "*.default.svc.cluster.local"}
    with pytest.raises(InvalidArgument, match="wildcard"):
        issue(world, "kubelet-serving", params, caller=Caller("narrow"))


def test_apiserver_keeps_the_wildcards_kubeadm_allows() -> None:
    apiserver = PROFILES["apiserver"]
    params = {"node_name": "cp-1", "advertise_address": "10.0.0.1", "extra_sans": "*.example.com"}
    assert "*.example.com" in apiserver.sans(parse_inputs(apiserver, params)).dns


# --- defect 8: one IP policy ------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "0.0.0.0",
        "::",
        "::ffff:0.0.0.0",
        "224.0.0.1",
        "ff00::1",
        "::ffff:224.0.0.1",
        "::ffff:1.2.3.4",
    ],
)
def test_every_entry_refuses_the_same_addresses(value: str) -> None:
    for parse in (parse_ip, parse_san, parse_endpoint_host):
        with pytest.raises(InvalidArgument):
            parse(value, "x")


@pytest.mark.parametrize(
    "cidr", ["224.0.0.0/24", "ff00::/120", "::ffff:0.0.0.0/120", "10.96.0.0/12,ff00::/120"]
)
def test_a_service_cidr_whose_first_address_is_not_unicast_is_refused(cidr: str) -> None:
    apiserver = PROFILES["apiserver"]
    params = {"node_name": "cp-1", "advertise_address": "10.0.0.1", "service_cidr": cidr}
    with pytest.raises(InvalidArgument, match="service_cidr"):
        parse_inputs(apiserver, params)


def test_the_x509_library_matches_ipv4_mapped_as_we_assume() -> None:
    # The refusal above exists because the mapped form names the same host: a certificate
    # carrying it in 16 bytes is a different SAN byte-wise, but Go compares with Equal.
    mapped = x509.IPAddress(ipaddress.ip_address("::ffff:10.96.0.1"))
    assert isinstance(mapped.value, ipaddress.IPv6Address)
    assert mapped.value.ipv4_mapped == ipaddress.ip_address("10.96.0.1")


# --- found by the fuzz suite: a NUL byte in a path from Terraform's query -------------


def test_a_client_config_path_with_a_nul_byte_is_a_config_error() -> None:
    import io

    from kubeca_client import terraform
    from kubeca_client.errors import ConfigError

    query = terraform._query(io.BytesIO(b'{"client_config": "a\\u0000b"}'))
    with pytest.raises(ConfigError, match="not a file path"):
        terraform._config(query, terraform._timeout(query))
