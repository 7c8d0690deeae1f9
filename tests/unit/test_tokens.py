"""issuance/tokens.py: one-time bootstrap tokens in kubeadm's shape, bound to one node,
its addresses and its profiles; each profile obtained once; every failure one answer.

tests/integration/test_auth.py keeps the end-to-end cases (the token over the bootstrap
port, two workers racing for one use, the CLI); these hold each rule.
"""

from __future__ import annotations

import hashlib
import ipaddress
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from kubeca_client.errors import InvalidArgument, KubecaError, PermissionDenied, Unauthenticated
from kubeca_client.names import SubjectAltNames
from kubeca_server.issuance import tokens
from kubeca_server.issuance.model import Caller, IssuedCertificate
from kubeca_server.issuance.tokens import INVALID, TOKEN, TokenRequest, make_record
from kubeca_server.profiles import PROFILES, Inputs
from kubeca_server.store import TokenRecord

from tests.unit.conftest import (
    CALLER,
    Clock,
    World,
    WorldFactory,
    grant,
    inventory,
    issue,
    token_caller,
)

T0 = datetime(2030, 1, 1, tzinfo=UTC)
KUBELET = ("kubelet-client", "kubelet-serving")
SERVING = {"node_name": "worker-1", "advertise_address": "10.0.0.21"}


def request(
    profiles: tuple[str, ...] = KUBELET,
    node_name: str = "worker-1",
    addresses: tuple[str, ...] = ("10.0.0.21",),
    ttl: timedelta | None = timedelta(minutes=10),
) -> TokenRequest:
    return TokenRequest(profiles, node_name, addresses, ttl)


def create(
    world: World, profiles: tuple[str, ...] = KUBELET, ttl: timedelta = timedelta(minutes=10)
) -> tuple[str, TokenRecord]:
    made: tuple[str, TokenRecord] = world.core.tokens.create(CALLER, request(profiles, ttl=ttl))
    return made


def stored(world: World, token_id: str) -> TokenRecord:
    with world.store.unit(read_only=True) as unit:
        record = unit.tokens.find(token_id)
    assert record is not None
    return record


def refused_as_invalid(world: World, token: str, profile: str, parameters: dict[str, str]) -> None:
    with pytest.raises(Unauthenticated) as caught:
        issue(world, profile, parameters, caller=token_caller(token))
    assert caught.value.message == INVALID


# --- the token itself --------------------------------------------------------------------


def test_a_new_token_has_kubeadms_shape_and_is_random() -> None:
    made = {tokens.new_token() for _ in range(50)}
    assert len(made) == 50
    assert all(TOKEN.fullmatch(t) for t in made)
    assert len({t.split(".")[0] for t in made}) == 50


def test_make_record_stores_the_hash_and_binds_node_addresses_and_profiles() -> None:
    token, record = make_record(
        request(
            ("kubelet-serving", "kubelet-client", "kubelet-serving"), addresses=("fd00::0010",)
        ),
        "creator",
        T0,
        timedelta(days=2),
    )
    assert TOKEN.fullmatch(token)
    assert record.token_id == token.split(".")[0]
    assert record.secret_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token.split(".")[1] not in repr(record)
    assert record.profiles == ("kubelet-serving", "kubelet-client")  # once each, in order
    assert (record.node_name, record.addresses) == ("worker-1", ("fd00::10",))
    assert (record.created_by, record.created_at, record.expires_at) == (
        "creator",
        T0,
        T0 + timedelta(minutes=10),
    )
    assert record.max_lifetime == timedelta(days=2)
    assert (record.used_profiles, record.revoked) == ((), False)


def test_a_token_lives_an_hour_unless_told() -> None:
    for unset in (None, timedelta(0)):  # 0 is how the API says "unset"
        _, record = make_record(request(ttl=unset), "c", T0, timedelta(days=1))
        assert record.expires_at == T0 + timedelta(hours=1)


@pytest.mark.parametrize(
    ("made", "says"),
    [
        (request(profiles=()), "at least one profile"),
        (request(profiles=("kube-god",)), "no profile named 'kube-god'"),
        (request(profiles=("super-admin",)), "never available to bootstrap tokens"),
        (request(profiles=("admin",)), "names no node, so no token can carry it"),
        (request(profiles=("kubelet-client", "scheduler")), "profile scheduler names no node"),
        (request(node_name="Worker_1"), "node_name"),
        (request(addresses=("10.0.0.300",)), "addresses"),
        (request(addresses=("0.0.0.0",)), "addresses"),
        (request(ttl=timedelta(seconds=-5)), "ttl must be positive"),
        (request(ttl=timedelta(hours=24, seconds=1)), "at most 86400s"),
    ],
)
def test_a_request_for_a_token_is_validated(made: TokenRequest, says: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        make_record(made, "c", T0, timedelta(days=1))
    assert says in caught.value.message


def test_a_token_request_is_described_bounded() -> None:
    fields = request(("x" * 100,) * 40, "n" * 300, ("a" * 100,) * 40).fields()
    assert len(fields["profiles"]) == 16 and all(len(p) <= 64 for p in fields["profiles"])
    assert len(fields["node_name"]) <= 253
    assert len(fields["addresses"]) == 16 and all(len(a) <= 64 for a in fields["addresses"])


# --- authentication: one answer for every failure -------------------------------------------


def test_a_genuine_token_authenticates_to_its_record(world: World) -> None:
    token, record = create(world)
    assert tokens.authenticate(world.store, token, datetime.now(UTC)) == record


@pytest.mark.parametrize(
    "presented",
    ["", "abcdef", "ABCDEF.0123456789ABCDEF", "abcdef.0123456789abcde", "abcdef:0123456789abcdef"],
)
def test_a_token_of_the_wrong_shape_is_invalid(world: World, presented: str) -> None:
    with pytest.raises(Unauthenticated) as caught:
        tokens.authenticate(world.store, presented, T0)
    assert caught.value.message == INVALID


def test_used_unknown_wrong_revoked_and_expired_tokens_get_one_answer(
    make_world: WorldFactory,
) -> None:
    clock = Clock()
    world = make_world(clock=clock)
    used, _ = create(world, ("kubelet-client",))
    issue(world, "kubelet-client", {"node_name": "worker-1"}, caller=token_caller(used))
    wrong_secret = used.split(".")[0] + "." + "0" * 16  # a real id, a wrong secret
    revoked, revoked_record = create(world)
    world.core.tokens.revoke(CALLER, revoked_record.token_id)
    expiring, _ = create(world, ttl=timedelta(seconds=2))
    clock.advance(timedelta(seconds=2))  # expires_at itself is past
    answers = []
    for token in (used, wrong_secret, "zzzzzz.zzzzzzzzzzzzzzzz", revoked, expiring):
        with pytest.raises(Unauthenticated) as caught:
            issue(world, "kubelet-client", {"node_name": "worker-1"}, caller=token_caller(token))
        answers.append(caught.value.message)
    assert answers == [INVALID] * 5
    assert len(inventory(world.store)) == 1


def test_a_token_with_profiles_left_still_authenticates(world: World) -> None:
    token, record = create(world)
    issue(world, "kubelet-client", {"node_name": "worker-1"}, caller=token_caller(token))
    again = tokens.authenticate(world.store, token, datetime.now(UTC))
    assert again.used_profiles == ("kubelet-client",)
    assert again.token_id == record.token_id


# --- what a token may obtain ---------------------------------------------------------------


def a_record(**changes: object) -> TokenRecord:
    _, record = make_record(request(), "creator", T0, timedelta(days=1))
    return TokenRecord(**{**record.__dict__, **changes})  # type: ignore[arg-type]


def test_check_request_allows_exactly_the_tokens_own_request() -> None:
    record = a_record()
    sans = SubjectAltNames.of(["worker-1"], [ipaddress.ip_address("10.0.0.21")])
    inputs = Inputs(node_name="worker-1")
    tokens.check_request(record, PROFILES["kubelet-serving"], inputs, sans, timedelta(days=1))
    cases = [
        (PROFILES["kube-proxy"], inputs, sans, "does not allow profile kube-proxy"),
        (PROFILES["kubelet-serving"], Inputs(node_name="worker-2"), sans, "bound to node"),
        (
            PROFILES["kubelet-serving"],
            inputs,
            SubjectAltNames.of(["worker-1"], [ipaddress.ip_address("10.0.0.99")]),
            "does not allow address 10.0.0.99",
        ),
        (
            PROFILES["kubelet-serving"],
            inputs,
            SubjectAltNames.of(["worker-1", "evil.example.com"], []),
            "does not allow DNS name 'evil.example.com'",
        ),
    ]
    for profile, case_inputs, case_sans, says in cases:
        with pytest.raises(PermissionDenied) as caught:
            tokens.check_request(record, profile, case_inputs, case_sans, timedelta(days=1))
        assert says in caught.value.message
        assert f"bootstrap token {record.token_id}" in caught.value.message
    with pytest.raises(PermissionDenied, match="allows lifetimes up to 86400s"):
        tokens.check_request(record, PROFILES["kubelet-serving"], inputs, sans, timedelta(days=2))


def test_a_token_obtains_each_profile_once(world: World) -> None:
    token, record = create(world)
    issued = issue(world, "kubelet-client", {"node_name": "worker-1"}, caller=token_caller(token))
    cn = issued.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "system:node:worker-1"
    refused_as_invalid(world, token, "kubelet-client", {"node_name": "worker-1"})
    # Its other profile is still there, once.
    issue(world, "kubelet-serving", SERVING, caller=token_caller(token))
    refused_as_invalid(world, token, "kubelet-serving", SERVING)
    assert stored(world, record.token_id).used_profiles == KUBELET
    (issued_record, *_) = [r for r in world.records() if r["event"] == "certificate.issued"]
    assert (issued_record["caller"], issued_record["token_id"]) == (
        f"token:{record.token_id}",
        record.token_id,
    )


def test_a_token_is_bound_to_its_node_address_and_profiles_and_refusals_use_nothing(
    world: World,
) -> None:
    token, record = create(world)
    node = token_caller(token)
    refusals = {
        "other-node": ("kubelet-serving", {**SERVING, "node_name": "worker-2"}),
        "other-address": ("kubelet-serving", {**SERVING, "advertise_address": "10.0.0.99"}),
        "other-name": ("kubelet-serving", {**SERVING, "extra_sans": "evil.example.com"}),
        "other-profile": ("kube-proxy", {}),
    }
    messages = {}
    for what, (profile, parameters) in refusals.items():
        with pytest.raises(PermissionDenied) as caught:
            issue(world, profile, parameters, caller=node)
        messages[what] = caught.value.message
        assert caught.value.context["token_id"] == record.token_id
    assert (
        f"bootstrap token {record.token_id} is bound to node 'worker-1'" in messages["other-node"]
    )
    assert "does not allow address 10.0.0.99" in messages["other-address"]
    assert "does not allow DNS name 'evil.example.com'" in messages["other-name"]
    assert "does not allow profile kube-proxy" in messages["other-profile"]
    # None of the refusals used the token up.
    assert stored(world, record.token_id).used_profiles == ()
    issued = issue(world, "kubelet-serving", SERVING, caller=node)
    sans = issued.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert [str(ip) for ip in sans.value.get_values_for_type(x509.IPAddress)] == ["10.0.0.21"]
    refused_as_invalid(world, token, "kubelet-serving", SERVING)


def test_a_token_cannot_outlive_its_creators_lifetime_ceiling(make_world: WorldFactory) -> None:
    short = grant("short", max_lifetime=timedelta(days=1))
    world = make_world(grants={"short": short})
    token, _ = world.core.tokens.create(
        Caller("short"), TokenRequest(["kubelet-client"], "worker-1", [], timedelta(hours=1))
    )
    node = token_caller(token)
    params = {"node_name": "worker-1"}
    with pytest.raises(PermissionDenied, match="allows lifetimes up to 86400s"):
        issue(world, "kubelet-client", params, lifetime=timedelta(days=300), caller=node)
    issued = issue(world, "kubelet-client", params, caller=node)  # the ceiling is the default
    cert = issued.certificate
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=1, minutes=5)


def test_concurrent_uses_of_one_token_yield_one_certificate(make_world: WorldFactory) -> None:
    world = make_world(sqlite=True)
    for _ in range(5):
        token, record = create(world, ("kubelet-client",))
        barrier = threading.Barrier(4)

        def race(token: str = token, barrier: threading.Barrier = barrier) -> object:
            barrier.wait(timeout=10)
            try:
                return issue(
                    world, "kubelet-client", {"node_name": "worker-1"}, caller=token_caller(token)
                )
            except KubecaError as exc:
                return exc

        with ThreadPoolExecutor(max_workers=4) as pool:
            outcomes = [f.result(timeout=30) for f in [pool.submit(race) for _ in range(4)]]
        issued = [o for o in outcomes if isinstance(o, IssuedCertificate)]
        refused = [o for o in outcomes if isinstance(o, KubecaError)]
        assert len(issued) == 1, outcomes
        assert [(type(r), r.message) for r in refused] == [(Unauthenticated, INVALID)] * 3
        assert stored(world, record.token_id).used_profiles == ("kubelet-client",)
    assert len(inventory(world.store)) == 5
