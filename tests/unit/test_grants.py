"""issuance/grants.py: who may ask for what. Each rule alone, then through the pipeline.

The grants here are the shapes tests/integration/test_auth.py deploys (limited,
wildcard, masters); it keeps one end-to-end case per rule, these hold the rest.
"""

from __future__ import annotations

import ipaddress
from datetime import timedelta

import pytest
from cryptography import x509
from kubeca_client.errors import PermissionDenied, Unauthenticated
from kubeca_client.names import SubjectAltNames
from kubeca_server.config import Grant
from kubeca_server.issuance import grants
from kubeca_server.issuance.model import ANONYMOUS, Caller, IssueRequest
from kubeca_server.profiles import PROFILES, Inputs, parse_inputs

from tests.unit.conftest import World, WorldFactory, grant, inventory, issue
from tests.unit.helpers import make_csr, subject

LIMITED = grant(
    "limited",
    profiles=frozenset({"etcd-server", "kubelet-serving", "admin"}),
    node_names=("node-*",),
    san_dns=("db.example.com", ".internal.example.com"),
    san_cidrs=(ipaddress.ip_network("10.1.0.0/16"),),
    max_lifetime=timedelta(days=30),
    bootstrap_tokens=False,
)
WILDCARD = grant("wildcard", profiles=frozenset({"*"}))
MASTERS = grant("masters", profiles=frozenset({"super-admin"}))
NOTHING = grant("nothing", node_names=(), san_dns=(), san_cidrs=())  # every profile, no names
GRANTS = {g.identity: g for g in (LIMITED, WILDCARD, MASTERS)}
DAY = timedelta(days=1)


def check(grant_: Grant, profile: str, parameters: dict[str, str]) -> None:
    """The grant's rules for a request, as the pipeline applies them."""
    chosen = PROFILES[profile]
    inputs = parse_inputs(chosen, parameters)
    grants.check_request(grant_, chosen, inputs, chosen.sans(inputs), DAY)


def refusal(grant_: Grant, profile: str, parameters: dict[str, str]) -> str:
    with pytest.raises(PermissionDenied) as caught:
        check(grant_, profile, parameters)
    return caught.value.message


@pytest.fixture
def granted(make_world: WorldFactory) -> World:
    return make_world(grants=GRANTS, enable_super_admin=True)


# --- profiles ----------------------------------------------------------------------------


def test_a_grant_allows_the_profiles_it_names_and_no_other() -> None:
    grants.check_profile(LIMITED, PROFILES["admin"])
    with pytest.raises(
        PermissionDenied, match=r"grant 'limited' does not allow profile apiserver$"
    ):
        grants.check_profile(LIMITED, PROFILES["apiserver"])


def test_a_wildcard_covers_every_profile_but_system_masters() -> None:
    for profile in PROFILES.values():
        assert grants.allows_profile(WILDCARD, profile) is (not profile.grants_system_masters)
    with pytest.raises(PermissionDenied) as caught:
        grants.check_profile(WILDCARD, PROFILES["super-admin"])
    assert "does not allow profile super-admin" in caught.value.message
    assert "'*' does not cover them" in caught.value.message


def test_super_admin_needs_its_name_in_the_grant() -> None:
    grants.check_profile(MASTERS, PROFILES["super-admin"])
    with pytest.raises(PermissionDenied, match=r"grant 'masters' does not allow profile admin$"):
        grants.check_profile(MASTERS, PROFILES["admin"])
    # Without a "*" in the grant there is nothing to explain about wildcards.
    with pytest.raises(PermissionDenied) as caught:
        grants.check_profile(LIMITED, PROFILES["super-admin"])
    assert "'*'" not in caught.value.message


# --- node names --------------------------------------------------------------------------


def test_node_names_match_exactly_or_by_pattern() -> None:
    grants.check_node(LIMITED, "node-1")
    grants.check_node(grant(node_names=("cp-1",)), "cp-1")
    with pytest.raises(PermissionDenied) as caught:
        grants.check_node(LIMITED, "db-1")
    assert "does not allow node name 'db-1'" in caught.value.message
    assert "(node_names: node-*)" in caught.value.message


def test_node_name_patterns_are_case_sensitive_and_whole() -> None:
    for name in ("Node-1", "xnode-1", "node"):
        with pytest.raises(PermissionDenied):
            grants.check_node(LIMITED, name)


def test_a_grant_without_node_names_allows_none() -> None:
    with pytest.raises(PermissionDenied, match=r"node_names: none\)"):
        grants.check_node(NOTHING, "node-1")


def test_a_wrong_node_is_refused_by_its_rule_for_every_node_profile() -> None:
    message = refusal(LIMITED, "kubelet-serving", {"node_name": "db-1"})
    assert "does not allow node name 'db-1'" in message and "node-*" in message
    message = refusal(
        LIMITED, "etcd-server", {"node_name": "db-1", "advertise_address": "10.1.0.1"}
    )
    assert "does not allow node name 'db-1'" in message


# --- SANs --------------------------------------------------------------------------------


def test_dns_rules_are_exact_names_or_subdomains_of_a_suffix() -> None:
    check(LIMITED, "kubelet-serving", {"node_name": "node-1", "extra_sans": "db.example.com"})
    check(
        LIMITED, "kubelet-serving", {"node_name": "node-1", "extra_sans": "x.internal.example.com"}
    )
    check(
        LIMITED,
        "kubelet-serving",
        {"node_name": "node-1", "extra_sans": "a.b.internal.example.com"},
    )


@pytest.mark.parametrize(
    "name", ["evil.example.com", "internal.example.com", "xinternal.example.com", "db.example.co"]
)
def test_any_other_dns_name_is_refused_naming_the_rules(name: str) -> None:
    # A suffix rule needs a label before its dot: it is not the name itself.
    message = refusal(LIMITED, "kubelet-serving", {"node_name": "node-1", "extra_sans": name})
    assert f"does not allow DNS SAN {name!r}" in message
    assert "san_dns: db.example.com, .internal.example.com" in message


def test_ip_sans_must_be_in_a_granted_network() -> None:
    check(LIMITED, "etcd-server", {"node_name": "node-1", "advertise_address": "10.1.0.1"})
    message = refusal(
        LIMITED, "etcd-server", {"node_name": "node-1", "advertise_address": "10.2.0.1"}
    )
    assert "does not allow IP SAN 10.2.0.1" in message and "10.1.0.0/16" in message
    message = refusal(
        grant(san_cidrs=()), "kubelet-serving", {"node_name": "n", "advertise_address": "10.1.0.1"}
    )
    assert "san_cidrs: none" in message


def test_the_node_name_as_a_san_needs_no_dns_rule() -> None:
    # It is checked as a node name; the DNS rules cover only what the caller added.
    check(grant(san_dns=(), node_names=("node-*",)), "kubelet-serving", {"node_name": "node-1"})


def test_names_the_profile_itself_puts_there_need_no_grant() -> None:
    strict = grant(san_dns=(), san_cidrs=(ipaddress.ip_network("10.1.0.0/16"),))
    # etcd: localhost, 127.0.0.1, ::1; the API server: kubernetes.* and 10.96.0.1.
    check(strict, "etcd-server", {"node_name": "etcd-1", "advertise_address": "10.1.0.5"})
    check(strict, "apiserver", {"node_name": "cp-1", "advertise_address": "10.1.0.5"})


@pytest.mark.parametrize(
    ("profile", "parameters", "says"),
    [
        ("etcd-server", {"extra_sans": "localhost"}, "DNS SAN 'localhost'"),
        ("etcd-server", {"extra_sans": "127.0.0.1"}, "IP SAN 127.0.0.1"),
        ("apiserver", {"extra_sans": "10.96.0.1"}, "IP SAN 10.96.0.1"),
        ("apiserver", {"control_plane_endpoint": "kubernetes:6443"}, "DNS SAN 'kubernetes'"),
        ("apiserver", {"advertise_address": "127.0.0.1"}, "IP SAN 127.0.0.1"),
    ],
)
def test_the_same_fixed_names_asked_for_by_the_caller_need_a_grant(
    profile: str, parameters: dict[str, str], says: str
) -> None:
    strict = grant(san_dns=(), san_cidrs=(ipaddress.ip_network("10.1.0.0/16"),))
    params = {"node_name": "n-1", "advertise_address": "10.1.0.5", **parameters}
    assert f"does not allow {says}" in refusal(strict, profile, params)


def test_check_names_holds_every_name_to_the_grant() -> None:
    sans = SubjectAltNames.of(["a.internal.example.com"], [ipaddress.ip_address("10.1.2.3")])
    grants.check_names(LIMITED, sans, Inputs())
    with pytest.raises(PermissionDenied, match=r"IP SAN 10.9.9.9"):
        grants.check_names(
            LIMITED, SubjectAltNames.of([], [ipaddress.ip_address("10.9.9.9")]), Inputs()
        )


# --- lifetimes -------------------------------------------------------------------------


def test_a_lifetime_up_to_the_grants_maximum_is_allowed() -> None:
    grants.check_lifetime(LIMITED, timedelta(days=30))
    with pytest.raises(PermissionDenied) as caught:
        grants.check_lifetime(LIMITED, timedelta(days=31))
    assert caught.value.message == "grant 'limited' allows lifetimes up to 30 days, not 31.00"


def test_the_profile_rule_is_checked_first() -> None:
    message = refusal(LIMITED, "apiserver", {"node_name": "db-1", "advertise_address": "10.9.0.1"})
    assert "does not allow profile apiserver" in message


# --- through the pipeline ----------------------------------------------------------------


def test_an_identity_without_a_grant_is_denied(granted: World) -> None:
    with pytest.raises(PermissionDenied, match="'nobody-granted' has no grant"):
        issue(granted, "admin", caller=Caller("nobody-granted"))
    assert inventory(granted.store) == []


def test_a_caller_neither_operator_nor_token_is_unauthenticated(granted: World) -> None:
    with pytest.raises(Unauthenticated, match=r"client certificate .* or a bootstrap token"):
        issue(granted, "admin", caller=Caller("anonymous", kind=ANONYMOUS))


def test_a_grant_refusal_carries_the_requested_subject(granted: World) -> None:
    csr = make_csr(name=subject("kube-apiserver"))
    parameters = {"node_name": "node-1", "advertise_address": "10.1.0.5"}
    with pytest.raises(PermissionDenied, match="does not allow profile apiserver") as caught:
        granted.pipeline.issue(Caller("limited"), IssueRequest("apiserver", csr, parameters))
    assert caught.value.context["requested_subject"] == "CN=kube-apiserver"
    assert granted.records() == []


def test_limited_may_add_a_subdomain_and_an_exact_name(granted: World) -> None:
    parameters = {"node_name": "node-1", "extra_sans": "x.internal.example.com,db.example.com"}
    issued = issue(granted, "kubelet-serving", parameters, caller=Caller("limited"))
    sans = issued.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert {"node-1", "x.internal.example.com", "db.example.com"} <= set(
        sans.value.get_values_for_type(x509.DNSName)
    )


def test_limited_may_certify_an_address_inside_its_cidr(granted: World) -> None:
    parameters = {"node_name": "node-1", "advertise_address": "10.1.0.1"}
    issued = issue(granted, "etcd-server", parameters, caller=Caller("limited"))
    assert issued.authority == "etcd-ca"


def test_the_grants_ceiling_lowers_the_default_lifetime(granted: World) -> None:
    # The server's default (365 days) is beyond the limited grant's 30: no need to ask.
    issued = issue(granted, "admin", caller=Caller("limited"))
    cert = issued.certificate
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=30, minutes=5)
    views = {v.profile.name: v for v in granted.pipeline.profiles(Caller("limited"))}
    assert views["admin"].default_lifetime == timedelta(days=30)
    with pytest.raises(PermissionDenied, match="allows lifetimes up to 30 days"):
        issue(granted, "admin", lifetime=timedelta(days=31), caller=Caller("limited"))


def test_the_profiles_a_caller_sees_enabled_are_the_ones_its_grant_allows(granted: World) -> None:
    def enabled(identity: str) -> set[str]:
        return {v.profile.name for v in granted.pipeline.profiles(Caller(identity)) if v.enabled}

    assert enabled("limited") == {"etcd-server", "kubelet-serving", "admin"}
    assert enabled("masters") == {"super-admin"}
    assert enabled("wildcard") == set(PROFILES) - {"super-admin"}


def test_wildcard_covers_ordinary_profiles(granted: World) -> None:
    assert issue(granted, "admin", caller=Caller("wildcard")).authority == "kubernetes-ca"


def test_named_super_admin_is_issued_and_recorded_as_critical(granted: World) -> None:
    issued = issue(granted, "super-admin", caller=Caller("masters"))
    (record,) = granted.records()
    assert (record["caller"], record["level"], record["system_masters"]) == (
        "masters",
        "critical",
        True,
    )
    assert record["serial"] == issued.serial_hex


def test_masters_grant_is_only_super_admin(granted: World) -> None:
    with pytest.raises(PermissionDenied, match="grant 'masters' does not allow profile admin"):
        issue(granted, "admin", caller=Caller("masters"))
