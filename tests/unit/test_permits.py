"""issuance/permits.py: a caller becomes one Permit (an operator's grant or a bootstrap
token), and the pipeline asks every permit the same questions."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubeca_client.errors import PermissionDenied, Unauthenticated
from kubeca_client.names import SubjectAltNames
from kubeca_server.issuance.model import ANONYMOUS, LOCAL, Caller
from kubeca_server.issuance.permits import Gatekeeper, GrantPermit, TokenPermit
from kubeca_server.issuance.tokens import INVALID, TokenRequest
from kubeca_server.profiles import PROFILES, Inputs
from kubeca_server.store import Store, TokenRecord
from kubeca_server.store.sqlite import SQLiteStore

from tests.unit.conftest import CALLER, World, WorldFactory, grant, token_caller

NOW = datetime.now(UTC)
CLIENT, SERVING = PROFILES["kubelet-client"], PROFILES["kubelet-serving"]


def new_token(
    world: World, profiles: tuple[str, ...] = ("kubelet-client",)
) -> tuple[str, TokenRecord]:
    made: tuple[str, TokenRecord] = world.core.tokens.create(
        CALLER, TokenRequest(profiles, "worker-1", ["10.0.0.21"], timedelta(minutes=10))
    )
    return made


def used(store: Store, token_id: str) -> tuple[str, ...]:
    with store.unit(read_only=True) as unit:
        record = unit.tokens.find(token_id)
    assert record is not None
    return record.used_profiles


# --- a grant ---------------------------------------------------------------------------------


def test_a_grant_permit_answers_from_its_grant(world: World) -> None:
    limited = grant("limited", profiles=frozenset({"admin"}), max_lifetime=timedelta(days=30))
    permit = GrantPermit(limited)
    assert (permit.identity, permit.idempotent, permit.ceiling) == (
        "limited",
        True,
        timedelta(days=30),
    )
    assert permit.allows(PROFILES["admin"])
    assert not permit.allows(PROFILES["scheduler"])
    assert permit.fields() == {}
    permit.check(PROFILES["admin"], Inputs(), SubjectAltNames(), timedelta(days=30))
    with pytest.raises(PermissionDenied, match="allows lifetimes up to 30 days"):
        permit.check(PROFILES["admin"], Inputs(), SubjectAltNames(), timedelta(days=31))
    with pytest.raises(PermissionDenied, match="does not allow profile scheduler"):
        permit.check(PROFILES["scheduler"], Inputs(), SubjectAltNames(), timedelta(days=1))


class Untouchable:
    """A store that fails the test if anything opens a unit of work on it."""

    def unit(self, *, read_only: bool = False) -> Any:
        raise AssertionError("a grant permit touched the store")

    def probe(self) -> None: ...

    def close(self) -> None: ...


def test_a_grant_is_not_used_up() -> None:
    permit = GrantPermit(grant())
    store: Any = Untouchable()
    for _ in range(3):
        permit.use(store, PROFILES["admin"], NOW)
    permit.give_back(store, PROFILES["admin"])


def test_a_wildcard_grant_permit_never_allows_system_masters() -> None:
    permit = GrantPermit(grant(profiles=frozenset({"*"})))
    assert not permit.allows(PROFILES["super-admin"])
    assert all(permit.allows(p) for p in PROFILES.values() if not p.grants_system_masters)


# --- a token ---------------------------------------------------------------------------------


def test_a_token_permit_answers_from_its_record(world: World) -> None:
    _, record = new_token(world)
    permit = TokenPermit(record)
    assert (permit.identity, permit.idempotent, permit.ceiling) == (
        f"token:{record.token_id}",
        False,  # each profile once: there is no "the same again"
        record.max_lifetime,
    )
    assert permit.allows(CLIENT)
    assert not permit.allows(SERVING)
    assert permit.fields() == {"token_id": record.token_id}
    permit.check(CLIENT, Inputs(node_name="worker-1"), SubjectAltNames(), timedelta(days=1))
    with pytest.raises(PermissionDenied, match="bound to node 'worker-1'"):
        permit.check(CLIENT, Inputs(node_name="worker-2"), SubjectAltNames(), timedelta(days=1))


def test_a_token_is_used_once_per_profile_and_given_back_whole(world: World) -> None:
    _, record = new_token(world, ("kubelet-client", "kubelet-serving"))
    permit = TokenPermit(record)
    permit.use(world.store, CLIENT, NOW)
    with pytest.raises(Unauthenticated) as caught:
        permit.use(world.store, CLIENT, NOW)
    assert caught.value.message == INVALID
    permit.use(world.store, SERVING, NOW)  # each profile on its own
    assert used(world.store, record.token_id) == ("kubelet-client", "kubelet-serving")
    permit.give_back(world.store, CLIENT)
    assert used(world.store, record.token_id) == ("kubelet-serving",)
    permit.use(world.store, CLIENT, NOW)  # usable again, once
    assert used(world.store, record.token_id) == ("kubelet-client", "kubelet-serving")


def test_a_revoked_expired_or_foreign_profile_token_cannot_be_used(world: World) -> None:
    _, record = new_token(world)
    permit = TokenPermit(record)
    for profile, at in ((SERVING, NOW), (CLIENT, record.expires_at)):
        with pytest.raises(Unauthenticated):
            permit.use(world.store, profile, at)
    world.core.tokens.revoke(CALLER, record.token_id)
    with pytest.raises(Unauthenticated):
        permit.use(world.store, CLIENT, NOW)
    assert used(world.store, record.token_id) == ()


@pytest.fixture
def sqlite_world(make_world: WorldFactory) -> World:
    return make_world(sqlite=True)


@pytest.fixture
def connections(sqlite_world: World, tmp_path: Path) -> Iterator[list[SQLiteStore]]:
    """One connection per racer, as separate worker processes would have."""
    assert isinstance(sqlite_world.store, SQLiteStore)
    opened = [SQLiteStore(sqlite_world.store.path) for _ in range(8)]
    yield opened
    for store in opened:
        store.close()


@pytest.mark.parametrize("shared", [True, False], ids=["one-connection", "a-connection-each"])
def test_of_racing_uses_of_one_token_exactly_one_wins_each_round(
    sqlite_world: World, connections: list[SQLiteStore], shared: bool
) -> None:
    _, record = new_token(sqlite_world)
    permit = TokenPermit(record)
    stores: list[Store] = [sqlite_world.store] * 8 if shared else list(connections)
    for _ in range(3):
        barrier = threading.Barrier(len(stores))
        with ThreadPoolExecutor(max_workers=len(stores)) as pool:
            won = list(pool.map(race, [permit] * len(stores), stores, [barrier] * len(stores)))
        assert won.count(True) == 1
        assert used(sqlite_world.store, record.token_id) == ("kubelet-client",)
        # The winner's issuance failed: it gives the use back, and the next round races again.
        permit.give_back(stores[won.index(True)], CLIENT)
        assert used(sqlite_world.store, record.token_id) == ()


def race(permit: TokenPermit, store: Store, barrier: threading.Barrier) -> bool:
    barrier.wait(timeout=10)
    try:
        permit.use(store, CLIENT, NOW)
    except Unauthenticated:
        return False
    return True


# --- the gatekeeper ----------------------------------------------------------------------------


def test_an_operator_is_permitted_by_its_grant(world: World) -> None:
    gatekeeper = Gatekeeper({"ops": grant("ops")}, world.store, lambda: NOW)
    permit = gatekeeper.authenticate(Caller("ops"))
    assert isinstance(permit, GrantPermit) and permit.identity == "ops"
    with pytest.raises(PermissionDenied, match="identity 'stranger' has no grant"):
        gatekeeper.authenticate(Caller("stranger"))


def test_a_node_is_permitted_by_its_token(world: World) -> None:
    token, record = new_token(world)
    gatekeeper = Gatekeeper({}, world.store, lambda: NOW)
    permit = gatekeeper.authenticate(token_caller(token))
    assert isinstance(permit, TokenPermit) and permit.record == record
    with pytest.raises(Unauthenticated, match=INVALID):
        gatekeeper.authenticate(token_caller(token.split(".")[0] + "." + "x" * 16))


@pytest.mark.parametrize("kind", [ANONYMOUS, LOCAL])
def test_anyone_else_is_unauthenticated(world: World, kind: str) -> None:
    gatekeeper = Gatekeeper({"x": grant("x")}, world.store, lambda: NOW)
    with pytest.raises(Unauthenticated, match=r"client certificate \(operators\) or a bootstrap"):
        gatekeeper.authenticate(Caller("x", kind=kind))


def test_operator_only_verbs_refuse_a_token(world: World) -> None:
    token, _ = new_token(world)
    gatekeeper = Gatekeeper({}, world.store, lambda: NOW)
    with pytest.raises(Unauthenticated, match="needs an operator's client certificate"):
        gatekeeper.grant(token_caller(token))
