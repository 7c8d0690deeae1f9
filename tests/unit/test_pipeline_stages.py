"""The pipeline's stages and what an issuance holds while it runs.

authenticate -> permit -> render -> check -> prepare -> sign -> record: a repeat is
answered before render (no signature); a token's use is taken only once the template
has passed lint; and when sign or record fails, the Reservation gives back the
idempotency claim and the token's use, and nothing enters the inventory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from kubeca_client.errors import Aborted, InvalidArgument, Unavailable
from kubeca_server.ca.lint import Linter
from kubeca_server.issuance import reservation
from kubeca_server.issuance.reservation import CLAIM_SECONDS
from kubeca_server.issuance.tokens import TokenRequest
from kubeca_server.store import Store, TokenRecord
from kubeca_server.store.memory import MemoryStore

from tests.unit.conftest import (
    CALLER,
    CASet,
    World,
    WorldFactory,
    inventory,
    issue,
    replace_keys,
    token_caller,
)
from tests.unit.helpers import NODE_PARAMS, HookedKey, make_csr, subject

SERVING = {"node_name": "worker-1", "advertise_address": "10.0.0.21"}


class FailingStore:
    """A store that refuses to append one kind of audit record while ``failing``, as a
    database does when its disk fills between the signature and the record."""

    def __init__(self, inner: Store, event: str) -> None:
        self.inner = inner
        self.event = event
        self.failing = False

    @contextmanager
    def unit(self, *, read_only: bool = False) -> Iterator[Any]:
        with self.inner.unit(read_only=read_only) as unit:
            yield _Unit(unit, self)

    def probe(self) -> None:
        self.inner.probe()

    def close(self) -> None:
        self.inner.close()


class _Unit:
    def __init__(self, inner: Any, store: FailingStore) -> None:
        self._inner = inner
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @property
    def audit(self) -> Any:
        return _Chain(self._inner.audit, self._store)


class _Chain:
    def __init__(self, inner: Any, store: FailingStore) -> None:
        self._inner = inner
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def append(self, record: Mapping[str, Any]) -> Any:
        if self._store.failing and record.get("event") == self._store.event:
            raise Unavailable("the state database is unavailable (disk I/O error)")
        return self._inner.append(record)


def new_token(world: World, node_name: str = "worker-1") -> tuple[str, TokenRecord]:
    made: tuple[str, TokenRecord] = world.core.tokens.create(
        CALLER,
        TokenRequest(
            ["kubelet-client", "kubelet-serving"], node_name, ["10.0.0.21"], timedelta(hours=1)
        ),
    )
    return made


def token_uses(world: World, token_id: str) -> tuple[str, ...]:
    with world.store.unit(read_only=True) as unit:
        record = unit.tokens.find(token_id)
    assert record is not None
    return record.used_profiles


def claim_is_free(world: World, fingerprint: str) -> bool:
    now = datetime.now(UTC)
    with world.store.unit() as unit:
        free = unit.claims.claim(fingerprint, now, now - timedelta(seconds=CLAIM_SECONDS))
        if free:
            unit.claims.release(fingerprint)
    return free


def issued_events(world: World) -> list[dict[str, Any]]:
    return [r for r in world.records() if r["event"] == "certificate.issued"]


@pytest.fixture
def signatures(world: World, ca_set: CASet, linter: Linter) -> list[str]:
    """Every CA signature the world's keys make from now on."""
    made: list[str] = []
    replace_keys(world, ca_set, lambda key: HookedKey(key, lambda: made.append("x")), linter)
    return made


def failing_keys(
    world: World, ca_set: CASet, linter: Linter, error: Exception
) -> Callable[[], None]:
    """Make every CA key raise ``error`` (an HSM gone away); returns the repair."""
    broken = {"on": True}

    def hook() -> None:
        if broken["on"]:
            raise error

    replace_keys(world, ca_set, lambda key: HookedKey(key, hook), linter)
    return lambda: broken.update(on=False)


# --- a repeat is answered before render ------------------------------------------------------


def test_a_current_certificate_is_handed_back_without_lint_or_signature(
    world: World, ca_set: CASet, linter: Linter
) -> None:
    events: list[str] = []

    class Watching(Linter):
        def __init__(self) -> None:
            pass

        def check(self, builder: Any, ca_key: Any) -> x509.Certificate:
            events.append("lint")
            return linter.check(builder, ca_key)

    replace_keys(
        world, ca_set, lambda key: HookedKey(key, lambda: events.append("sign")), Watching()
    )
    csr = make_csr()
    first = issue(world, "etcd-server", NODE_PARAMS, csr)
    assert events == ["lint", "sign"]
    again = issue(world, "etcd-server", NODE_PARAMS, csr)
    assert events == ["lint", "sign"]
    assert (again.reused, again.certificate, again.authority) == (
        True,
        first.certificate,
        "etcd-ca",
    )
    reused = world.records()[-1]
    assert (reused["event"], reused["outcome"], reused["serial"]) == (
        "certificate.reused",
        "reused",
        first.serial_hex,
    )
    assert len(inventory(world.store)) == 1


def test_force_new_takes_no_claim_and_waits_for_none(
    world: World, signatures: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reservation, "CLAIM_WAIT_SECONDS", 0.1)
    csr = make_csr()
    first = issue(world, "admin", csr=csr)
    world.core.inventory.revoke(CALLER, first.serial_hex, "superseded")  # nothing current
    fingerprint = issued_events(world)[0]["request_fingerprint"]
    now = datetime.now(UTC)
    with world.store.unit() as unit:  # another worker is signing this very request
        assert unit.claims.claim(fingerprint, now, now - timedelta(seconds=CLAIM_SECONDS))
    with pytest.raises(Aborted):
        issue(world, "admin", csr=csr)
    before = len(signatures)  # the certificate, and the CRL its revocation published
    forced = issue(world, "admin", csr=csr, force_new=True)
    assert forced.serial_hex != first.serial_hex
    assert len(signatures) == before + 1
    # Now there is a current certificate: a plain repeat gets it instead of waiting.
    again = issue(world, "admin", csr=csr)
    assert (again.reused, again.serial_hex) == (True, forced.serial_hex)


# --- what is taken, and when ------------------------------------------------------------------


def test_a_token_is_used_only_once_its_template_passed_lint(world: World) -> None:
    # "node.1" passes the parameter parser but not pkilint (a numeric top-level label).
    token, record = new_token(world, node_name="node.1")
    serving = {"node_name": "node.1", "advertise_address": "10.0.0.21"}
    with pytest.raises(InvalidArgument, match="would not pass lint"):
        issue(world, "kubelet-serving", serving, caller=token_caller(token))
    assert token_uses(world, record.token_id) == ()
    issue(world, "kubelet-client", {"node_name": "node.1"}, caller=token_caller(token))
    assert token_uses(world, record.token_id) == ("kubelet-client",)


def test_a_csr_asking_for_another_subject_is_refused_before_any_signature(
    world: World, signatures: list[str]
) -> None:
    token, record = new_token(world)
    csr = make_csr(name=subject("system:node:worker-2", "system:nodes"))
    with pytest.raises(InvalidArgument, match="does not match what this profile issues"):
        issue(world, "kubelet-client", {"node_name": "worker-1"}, csr, caller=token_caller(token))
    assert signatures == []
    assert token_uses(world, record.token_id) == ()


# --- a failure after the claim: everything given back -------------------------------------------


@pytest.mark.parametrize(
    "error",
    [Unavailable("the HSM session is gone"), RuntimeError("PKCS#11 CKR_DEVICE_ERROR")],
    ids=["unavailable", "unexpected"],
)
def test_a_signature_that_fails_gives_back_the_claim_and_issues_nothing(
    world: World, ca_set: CASet, linter: Linter, error: Exception
) -> None:
    repair = failing_keys(world, ca_set, linter, error)
    csr = make_csr()
    with pytest.raises(type(error)) as caught:
        issue(world, "admin", csr=csr)
    assert caught.value is error or str(caught.value) == str(error)
    assert inventory(world.store) == []
    assert issued_events(world) == []
    repair()
    # The claim was released: the same request signs at once, no wait for a stale claim.
    started = datetime.now(UTC)
    issued = issue(world, "admin", csr=csr)
    assert not issued.reused
    assert datetime.now(UTC) - started < timedelta(seconds=5)
    assert claim_is_free(world, issued_events(world)[0]["request_fingerprint"])


def test_a_signature_that_fails_gives_back_the_tokens_use(
    world: World, ca_set: CASet, linter: Linter
) -> None:
    token, record = new_token(world)
    repair = failing_keys(world, ca_set, linter, Unavailable("the HSM session is gone"))
    with pytest.raises(Unavailable) as caught:
        issue(world, "kubelet-serving", SERVING, caller=token_caller(token))
    assert caught.value.context["token_id"] == record.token_id
    assert "request_fingerprint" in caught.value.context
    assert token_uses(world, record.token_id) == ()
    assert inventory(world.store) == []
    repair()
    issue(world, "kubelet-serving", SERVING, caller=token_caller(token))
    assert token_uses(world, record.token_id) == ("kubelet-serving",)


def test_a_record_that_cannot_be_written_returns_no_certificate_and_gives_everything_back(
    make_world: WorldFactory,
) -> None:
    store = FailingStore(MemoryStore(), "certificate.issued")
    world = make_world(store=store)
    token, record = new_token(world)
    csr = make_csr()
    store.failing = True
    returned = []
    for caller, profile, parameters in (
        (CALLER, "admin", {}),
        (token_caller(token), "kubelet-serving", SERVING),
    ):
        with pytest.raises(Unavailable, match="state database is unavailable"):
            returned.append(issue(world, profile, parameters, csr, caller=caller))
    assert returned == []
    assert inventory(world.store) == []
    assert issued_events(world) == []
    assert token_uses(world, record.token_id) == ()
    store.failing = False
    # Everything was given back: the operator's request and the token both go through now.
    issued = issue(world, "admin", csr=csr)
    assert not issued.reused
    issue(world, "kubelet-serving", SERVING, csr, caller=token_caller(token))
    assert token_uses(world, record.token_id) == ("kubelet-serving",)
    assert len(inventory(world.store)) == 2


def test_an_unreachable_store_refuses_before_anything_is_signed(
    world: World, signatures: list[str]
) -> None:
    assert isinstance(world.store, MemoryStore)
    world.store.available = False
    with pytest.raises(Unavailable):
        issue(world, "admin")
    world.store.available = True
    assert signatures == []
    assert inventory(world.store) == []
