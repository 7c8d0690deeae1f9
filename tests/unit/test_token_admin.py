"""issuance/token_admin.py: operators create, list and revoke bootstrap tokens, each with
its audit record in the same transaction, and never beyond their own grant."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

import pytest
from kubeca_client.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from kubeca_server.config import Grant
from kubeca_server.issuance.model import ANONYMOUS, Caller
from kubeca_server.issuance.tokens import TokenRequest
from kubeca_server.store import TokenRecord

from tests.unit.conftest import (
    Clock,
    World,
    WorldFactory,
    chain,
    grant,
    issue,
    token_caller,
)

# As tests/integration/test_auth.py deploys it.
TOKENS = grant(
    "tokens",
    profiles=frozenset({"kubelet-client", "kubelet-serving"}),
    node_names=("worker-*",),
    san_dns=(),
    san_cidrs=(ipaddress.ip_network("10.0.0.0/8"),),
    bootstrap_tokens=True,
)
OPERATOR = Caller("tokens", "ipv4:127.0.0.1:5555")
SERVING = {"node_name": "worker-1", "advertise_address": "10.0.0.21"}


def request(
    profiles: tuple[str, ...] = ("kubelet-client", "kubelet-serving"),
    node_name: str = "worker-1",
    addresses: tuple[str, ...] = ("10.0.0.21",),
) -> TokenRequest:
    return TokenRequest(profiles, node_name, addresses, timedelta(minutes=10))


def world_of(make_world: WorldFactory, *grants: Grant, **options: object) -> World:
    return make_world(grants={g.identity: g for g in (TOKENS, *grants)}, **options)


@pytest.fixture
def admin_world(make_world: WorldFactory) -> World:
    return world_of(make_world)


def stored(world: World, token_id: str) -> TokenRecord | None:
    with world.store.unit(read_only=True) as unit:
        return unit.tokens.find(token_id)


# --- create ------------------------------------------------------------------------------


def test_a_created_token_is_stored_with_its_record(admin_world: World) -> None:
    _, record = admin_world.core.tokens.create(OPERATOR, request())
    assert stored(admin_world, record.token_id) == record
    (created,) = admin_world.records()
    assert created["event"] == "token.created"
    assert (created["outcome"], created["token_id"], created["caller"]) == (
        "created",
        record.token_id,
        "tokens",
    )
    assert created["peer"] == "ipv4:127.0.0.1:5555"
    assert created["profiles"] == ["kubelet-client", "kubelet-serving"]
    assert (created["node_name"], created["addresses"]) == ("worker-1", ["10.0.0.21"])
    assert datetime.fromisoformat(created["expires"]) == record.expires_at
    assert (record.created_by, record.max_lifetime) == ("tokens", TOKENS.max_lifetime)


def test_only_a_hash_of_the_token_is_kept(admin_world: World) -> None:
    token, record = admin_world.core.tokens.create(OPERATOR, request())
    secret = token.split(".")[1]
    assert secret not in repr(stored(admin_world, record.token_id))
    assert secret not in admin_world.audit_path.read_text()
    assert all(secret not in row.record for row in chain(admin_world.store))


def test_managing_tokens_needs_the_token_grant(make_world: WorldFactory) -> None:
    limited = grant("limited", bootstrap_tokens=False)
    world = world_of(make_world, limited)
    token, record = world.core.tokens.create(OPERATOR, request())
    before = len(world.records())
    who = Caller("limited")
    for action in (
        lambda: world.core.tokens.create(who, request()),
        lambda: world.core.tokens.list(who),
        lambda: world.core.tokens.revoke(who, record.token_id),
    ):
        with pytest.raises(PermissionDenied, match="may not manage bootstrap tokens"):
            action()
    assert len(world.records()) == before
    found = stored(world, record.token_id)
    assert found is not None and not found.revoked  # the refused revocation did nothing
    issue(world, "kubelet-client", {"node_name": "worker-1"}, caller=token_caller(token))


@pytest.mark.parametrize(
    "caller",
    [Caller("nobody"), token_caller("abcdef.0123456789abcdef"), Caller("x", kind=ANONYMOUS)],
    ids=["no-grant", "token", "anonymous"],
)
def test_only_operators_with_a_grant_manage_tokens(admin_world: World, caller: Caller) -> None:
    with pytest.raises((PermissionDenied, Unauthenticated)):
        admin_world.core.tokens.create(caller, request())
    with pytest.raises((PermissionDenied, Unauthenticated)):
        admin_world.core.tokens.list(caller)


@pytest.mark.parametrize(
    ("profiles", "node_name", "addresses", "expected"),
    [
        (("etcd-server",), "worker-1", (), "does not allow profile etcd-server"),
        (("kubelet-client",), "db-1", (), "does not allow node name 'db-1'"),
        (("kubelet-serving",), "worker-1", ("192.168.1.1",), "does not allow IP SAN 192.168.1.1"),
        # A fixed name is exempt only where a profile puts it; a token's address is the
        # creator's choice.
        (("kubelet-serving",), "worker-1", ("127.0.0.1",), "does not allow IP SAN 127.0.0.1"),
        (("kubelet-serving",), "worker-1", ("::1",), "does not allow IP SAN ::1"),
    ],
)
def test_a_token_may_not_carry_more_than_its_creators_grant(
    admin_world: World,
    profiles: tuple[str, ...],
    node_name: str,
    addresses: tuple[str, ...],
    expected: str,
) -> None:
    with pytest.raises(PermissionDenied) as caught:
        admin_world.core.tokens.create(OPERATOR, request(profiles, node_name, addresses))
    assert expected in caught.value.message
    assert admin_world.records() == []


def test_a_token_cannot_carry_a_profile_that_names_no_node(admin_world: World) -> None:
    with pytest.raises(InvalidArgument, match="names no node"):
        admin_world.core.tokens.create(OPERATOR, request(("admin",), addresses=()))


@pytest.mark.parametrize("profile", ["kubelet-serving", "kubelet-client"])
def test_a_grant_of_one_kubelet_profile_makes_tokens_for_that_profile(
    make_world: WorldFactory, profile: str
) -> None:
    """Issue 9, item 8: token creation checked the node and addresses through the
    kubelet-client profile, so a grant allowing only kubelet-serving was refused."""
    only = grant(
        "only",
        profiles=frozenset({profile}),
        node_names=("worker-*",),
        san_dns=(),
        san_cidrs=(ipaddress.ip_network("10.0.0.0/8"),),
        bootstrap_tokens=True,
    )
    world = world_of(make_world, only)
    addresses = ("10.0.0.21",) if profile == "kubelet-serving" else ()
    token, record = world.core.tokens.create(
        Caller("only"), request((profile,), addresses=addresses)
    )
    assert record.profiles == (profile,)
    parameters = SERVING if profile == "kubelet-serving" else {"node_name": "worker-1"}
    issued = issue(world, profile, parameters, caller=token_caller(token))
    assert issued.profile.name == profile
    # And no further than that grant: the other kubelet profile stays out of its tokens.
    other = {"kubelet-serving": "kubelet-client", "kubelet-client": "kubelet-serving"}[profile]
    with pytest.raises(PermissionDenied, match=f"does not allow profile {other}"):
        world.core.tokens.create(Caller("only"), request((other,), addresses=addresses))


# --- list ----------------------------------------------------------------------------------


def test_listing_shows_live_tokens_newest_first_as_far_as_the_grant_reaches(
    make_world: WorldFactory,
) -> None:
    clock = Clock()
    serving_only = grant(
        "serving-only", profiles=frozenset({"kubelet-serving"}), bootstrap_tokens=True
    )
    world = world_of(make_world, serving_only, clock=clock)
    _, expired = world.core.tokens.create(
        OPERATOR, TokenRequest(["kubelet-client"], "worker-1", [], timedelta(seconds=30))
    )
    clock.advance(timedelta(seconds=1))
    _, both = world.core.tokens.create(OPERATOR, request())
    clock.advance(timedelta(seconds=1))
    _, serving = world.core.tokens.create(OPERATOR, request(("kubelet-serving",)))
    clock.advance(timedelta(seconds=30))
    assert [t.token_id for t in world.core.tokens.list(OPERATOR)] == [
        serving.token_id,
        both.token_id,
    ]
    assert expired.token_id not in {t.token_id for t in world.core.tokens.list(OPERATOR)}
    # Tokens its grant could have made, not every operator's.
    assert [t.token_id for t in world.core.tokens.list(Caller("serving-only"))] == [
        serving.token_id
    ]


def test_a_listed_token_says_what_it_was_used_for(admin_world: World) -> None:
    token, _ = admin_world.core.tokens.create(OPERATOR, request())
    issue(admin_world, "kubelet-client", {"node_name": "worker-1"}, caller=token_caller(token))
    (listed,) = admin_world.core.tokens.list(OPERATOR)
    assert listed.used_profiles == ("kubelet-client",)
    assert (listed.profiles, listed.node_name, listed.addresses, listed.created_by) == (
        ("kubelet-client", "kubelet-serving"),
        "worker-1",
        ("10.0.0.21",),
        "tokens",
    )
    assert listed.revoked is False


# --- revoke --------------------------------------------------------------------------------


def test_a_revoked_token_is_refused_and_listed_as_revoked(admin_world: World) -> None:
    token, record = admin_world.core.tokens.create(OPERATOR, request())
    issue(admin_world, "kubelet-client", {"node_name": "worker-1"}, caller=token_caller(token))
    admin_world.core.tokens.revoke(OPERATOR, record.token_id)
    with pytest.raises(Unauthenticated, match="invalid bootstrap token"):
        issue(admin_world, "kubelet-serving", SERVING, caller=token_caller(token))
    (listed,) = admin_world.core.tokens.list(OPERATOR)
    assert (listed.revoked, listed.used_profiles) == (True, ("kubelet-client",))
    revoked = admin_world.records()[-1]
    assert (revoked["event"], revoked["outcome"], revoked["token_id"], revoked["caller"]) == (
        "token.revoked",
        "revoked",
        record.token_id,
        "tokens",
    )


def test_revoking_an_unknown_token_writes_no_revocation_record(admin_world: World) -> None:
    before = chain(admin_world.store)
    with pytest.raises(NotFound, match="no unrevoked bootstrap token with id 'zzzzzz'"):
        admin_world.core.tokens.revoke(OPERATOR, "zzzzzz")
    assert chain(admin_world.store) == before
    assert not [r for r in admin_world.records() if r["event"] == "token.revoked"]


def test_revoking_twice_records_one_revocation(admin_world: World) -> None:
    _, record = admin_world.core.tokens.create(OPERATOR, request())
    admin_world.core.tokens.revoke(OPERATOR, record.token_id)
    with pytest.raises(NotFound):
        admin_world.core.tokens.revoke(OPERATOR, record.token_id)
    events = [r["event"] for r in admin_world.records()]
    assert events == ["token.created", "token.revoked"]


def test_a_refused_revocation_names_a_bounded_token_id(admin_world: World) -> None:
    with pytest.raises(NotFound) as caught:
        admin_world.core.tokens.revoke(OPERATOR, "x" * 10_000)
    assert len(caught.value.message) < 200


def test_the_clock_of_a_revocation_is_the_services(make_world: WorldFactory) -> None:
    moment = datetime(2030, 1, 1, tzinfo=UTC)
    world = world_of(make_world, clock=lambda: moment)
    _, record = world.core.tokens.create(OPERATOR, request())
    world.core.tokens.revoke(OPERATOR, record.token_id)
    assert world.records()[-1]["time"] == moment.isoformat()


# --- paging (issue 10, defect 3) ---------------------------------------------------------


@pytest.mark.parametrize("sqlite", [False, True])
def test_token_pages_follow_one_another_to_every_live_token(
    make_world: WorldFactory, sqlite: bool
) -> None:
    world = world_of(make_world, sqlite=sqlite)
    made = {world.core.tokens.create(OPERATOR, request())[1].token_id for _ in range(7)}
    seen: list[str] = []
    pages = 0
    token = ""
    while True:
        page = world.core.tokens.page(OPERATOR, token, 3)
        pages += 1
        assert len(page.tokens) <= 3
        seen.extend(t.token_id for t in page.tokens)
        if not (token := page.next_token):
            break
    assert pages == 3
    assert sorted(seen) == sorted(made) and len(seen) == len(made)


@pytest.mark.parametrize(
    "page_token", ["garbage!", "W10", "WzEsMiwzXQ", "WyJ4IiwgInkiXQ", "x" * 600, "WzFlOTk5LCAiYSJd"]
)
def test_a_token_page_token_not_handed_out_is_an_invalid_argument(
    admin_world: World, page_token: str
) -> None:
    with pytest.raises(InvalidArgument, match="page_token"):
        admin_world.core.tokens.page(OPERATOR, page_token, 0)


@pytest.mark.parametrize("size", [-1, 1001])
def test_a_token_page_size_out_of_range_is_an_invalid_argument(
    admin_world: World, size: int
) -> None:
    with pytest.raises(InvalidArgument, match="page_size"):
        admin_world.core.tokens.page(OPERATOR, "", size)
