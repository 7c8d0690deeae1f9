"""names.py: the parsers for node names, IPs, CIDRs, SANs and endpoints."""

from __future__ import annotations

import ipaddress

import pytest
from kubeca_client.errors import InvalidArgument
from kubeca_client.names import (
    SubjectAltNames,
    is_dns1123_subdomain,
    parse_cidr,
    parse_dns_name,
    parse_endpoint_host,
    parse_ip,
    parse_san,
    parse_san_list,
)

WHAT = "parameter x"


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


# --- DNS-1123 -------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["node1", "cp-1.example.com", "a", "0", "a" * 63, ".".join(["a" * 63] * 3) + "." + "a" * 61],
)
def test_dns1123_accepts(value: str) -> None:
    assert is_dns1123_subdomain(value)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "Bad_Name",
        "Node1",
        "-node",
        "node-",
        "a..b",
        ".a",
        "a.",
        "a" * 64,
        "a" * 300,
        "node 1",
        "n\u00f6de",
        "node1\n",
        "*.example.com",
    ],
)
def test_dns1123_refuses(value: str) -> None:
    assert not is_dns1123_subdomain(value)


def test_dns1123_limit_is_253_characters() -> None:
    name = ".".join(["a" * 63] * 4)  # 255 characters
    assert not is_dns1123_subdomain(name)
    assert is_dns1123_subdomain(name[:253].rstrip("."))


def test_parse_dns_name_error_names_the_parameter_and_value() -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_dns_name("Bad_Name", "parameter node_name")
    assert "parameter node_name" in caught.value.message
    assert "'Bad_Name'" in caught.value.message
    assert "DNS-1123" in caught.value.message


def test_error_shows_only_an_excerpt_of_a_huge_value() -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_dns_name("X" * 5000, WHAT)
    assert len(caught.value.message) < 300


# --- IPs and CIDRs -------------------------------------------------------------------


def test_parse_ip_v4_and_v6() -> None:
    assert parse_ip("10.0.0.1", WHAT) == ip("10.0.0.1")
    assert parse_ip("fd00::1", WHAT) == ip("fd00::1")


@pytest.mark.parametrize("value", ["cp-1", "10.0.0", "10.0.0.256", "10.0.0.1/32", ""])
def test_parse_ip_refuses(value: str) -> None:
    with pytest.raises(InvalidArgument, match=r"parameter x: .* is not an IP address"):
        parse_ip(value, WHAT)


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "224.0.0.1", "ff02::1", "fe80::1%eth0"])
def test_addresses_no_host_can_be_reached_at_are_refused(address: str) -> None:
    # Once certified as a node's advertise address; now refused by name.
    with pytest.raises(InvalidArgument, match="advertise_address"):
        parse_ip(address, "advertise_address")


@pytest.mark.parametrize("san", ["0.0.0.0", "ff02::1"])
def test_extra_sans_refuse_the_same_addresses(san: str) -> None:
    with pytest.raises(InvalidArgument, match="extra_sans"):
        parse_san_list(san, "extra_sans")


def test_parse_cidr() -> None:
    assert parse_cidr("10.96.0.0/12", WHAT) == ipaddress.ip_network("10.96.0.0/12")
    assert parse_cidr("fd00::/108", WHAT) == ipaddress.ip_network("fd00::/108")


@pytest.mark.parametrize("value", ["10.96.0.1/12", "nope", "10.96.0.0/33", "fd00::1/64"])
def test_parse_cidr_refuses(value: str) -> None:
    with pytest.raises(InvalidArgument, match="CIDR"):
        parse_cidr(value, WHAT)


@pytest.mark.parametrize("value", ["10.96.0.0", "10.96.0.5", "fd00::"])
def test_parse_cidr_requires_a_prefix_length(value: str) -> None:
    # A bare address is not "a network in CIDR form" (kubeadm's net.ParseCIDR refuses it);
    # taken as a /32 its "first address" would be network + 1, outside the network.
    with pytest.raises(InvalidArgument, match="CIDR"):
        parse_cidr(value, WHAT)


# --- SANs ------------------------------------------------------------------------------


def test_parse_san_ip_dns_and_wildcard() -> None:
    assert parse_san("10.0.0.1", WHAT) == SubjectAltNames(ips=(ip("10.0.0.1"),))
    assert parse_san("::1", WHAT) == SubjectAltNames(ips=(ip("::1"),))
    assert parse_san("lb.example.com", WHAT) == SubjectAltNames(dns=("lb.example.com",))
    assert parse_san("*.example.com", WHAT) == SubjectAltNames(dns=("*.example.com",))


@pytest.mark.parametrize(
    "value", ["*", "*.", "*.*.example.com", "a.*.example.com", "bad_san!", "UPPER.example", "x y"]
)
def test_parse_san_refuses(value: str) -> None:
    with pytest.raises(InvalidArgument, match="neither an IP address"):
        parse_san(value, WHAT)


def test_parse_san_list_deduplicates_and_sorts_dns() -> None:
    sans = parse_san_list("b.example, a.example,10.0.0.1,b.example,10.0.0.1,,fd00::1", WHAT)
    assert sans.dns == ("a.example", "b.example")
    assert sans.ips == (ip("10.0.0.1"), ip("fd00::1"))


def test_parse_san_list_keeps_wildcards() -> None:
    sans = parse_san_list("*.apps.example.com,apps.example.com", WHAT)
    assert sans.dns == ("*.apps.example.com", "apps.example.com")


def test_parse_san_list_of_only_separators_is_empty() -> None:
    assert not parse_san_list(" , ,", WHAT)


def test_parse_san_list_names_the_bad_item() -> None:
    with pytest.raises(InvalidArgument, match="'bad_san'"):
        parse_san_list("ok.example,bad_san", WHAT)


def test_parse_san_list_caps_the_number_of_names() -> None:
    parse_san_list(",".join(f"n{i}.example" for i in range(100)), WHAT)
    with pytest.raises(InvalidArgument, match="at most 100"):
        parse_san_list(",".join(f"n{i}.example" for i in range(101)), WHAT)


def test_subject_alt_names_union_deduplicates_ips_in_order() -> None:
    a = SubjectAltNames.of(["z.example"], [ip("10.0.0.2"), ip("10.0.0.1"), ip("10.0.0.2")])
    b = SubjectAltNames.of(["a.example", "z.example"], [ip("10.0.0.1"), ip("10.0.0.3")])
    merged = a | b
    assert merged.dns == ("a.example", "z.example")
    assert merged.ips == (ip("10.0.0.2"), ip("10.0.0.1"), ip("10.0.0.3"))


def test_empty_subject_alt_names_is_falsy() -> None:
    assert not SubjectAltNames()
    assert SubjectAltNames(dns=("a",))
    assert SubjectAltNames(ips=(ip("10.0.0.1"),))


# --- endpoints ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("api.example.com", SubjectAltNames(dns=("api.example.com",))),
        ("api.example.com:6443", SubjectAltNames(dns=("api.example.com",))),
        ("10.0.0.10", SubjectAltNames(ips=(ip("10.0.0.10"),))),
        ("10.0.0.10:6443", SubjectAltNames(ips=(ip("10.0.0.10"),))),
        ("[fd00::10]:6443", SubjectAltNames(ips=(ip("fd00::10"),))),
        ("[fd00::10]", SubjectAltNames(ips=(ip("fd00::10"),))),
        ("fd00::10", SubjectAltNames(ips=(ip("fd00::10"),))),
        ("::1", SubjectAltNames(ips=(ip("::1"),))),
        ("api.example.com:1", SubjectAltNames(dns=("api.example.com",))),
        ("api.example.com:65535", SubjectAltNames(dns=("api.example.com",))),
    ],
)
def test_parse_endpoint_host(value: str, expected: SubjectAltNames) -> None:
    assert parse_endpoint_host(value, WHAT) == expected


@pytest.mark.parametrize(
    "value",
    [
        "api.example.com:0",
        "api.example.com:65536",
        "api.example.com:",
        "api.example.com:https",
        "api.example.com:-1",
        "api.example.com:+443",
        "[fd00::10]:",
        "[fd00::10]:70000",
    ],
)
def test_parse_endpoint_host_refuses_a_bad_port(value: str) -> None:
    with pytest.raises(InvalidArgument, match="port"):
        parse_endpoint_host(value, WHAT)


@pytest.mark.parametrize("value", ["api.example.com:\u00b2", "api.example.com:\u0666\u0664"])
def test_parse_endpoint_host_refuses_non_ascii_digit_ports(value: str) -> None:
    # str.isdigit() is True for these; the port must still be refused as a user error
    # (superscript two even makes int() raise ValueError, which would be an INTERNAL error).
    with pytest.raises(InvalidArgument, match="port"):
        parse_endpoint_host(value, WHAT)


@pytest.mark.parametrize("value", ["[fd00::10", "[fd00::10]6443", "[fd00::10]x:1"])
def test_parse_endpoint_host_refuses_bad_brackets(value: str) -> None:
    with pytest.raises(InvalidArgument, match="HOST"):
        parse_endpoint_host(value, WHAT)


@pytest.mark.parametrize("value", ["Bad_Host:6443", "bad host", "[not-an-ip]x"])
def test_parse_endpoint_host_refuses_a_bad_host(value: str) -> None:
    with pytest.raises(InvalidArgument, match="parameter x"):
        parse_endpoint_host(value, WHAT)
