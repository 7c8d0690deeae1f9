"""After a reconnect the HSM's keys are checked against the CA certificates (issue 10,
defect 5): a token swapped for one with the same label and PIN but other keys makes the
service unavailable, saying why, instead of signing with keys nobody trusts."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
from kubeca_client.errors import Unavailable
from kubeca_client.keys import KeyAlgorithm, generate_private_key
from kubeca_server.ca.keycheck import MISMATCH
from kubeca_server.ca.lint import Linter
from kubeca_server.ca.signer import Signer
from kubeca_server.keys import CAPrivateKey, CAPublicKey

from tests.unit.conftest import CASet, World, WorldFactory, _key_of, issue, make_ca_set


@pytest.fixture
def own_cas(linter: Linter, tmp_path: Path) -> CASet:
    """CAs of this test alone: it changes their backend's connection count."""
    return make_ca_set(tmp_path / "cas", linter)


def _swap(
    world: World, cas: CASet, linter: Linter, key: Callable[[str, int], CAPrivateKey]
) -> None:
    """Every generation's signer over ``key(authority, generation)``, behind the guard,
    and a reconnect: what the PKCS#11 backend does when it finds the keys by label
    again in another token."""
    swapped = {
        name: dataclasses.replace(
            ca,
            generations=tuple(
                dataclasses.replace(
                    g, signer=Signer(key(name, g.number), linter, world.core.keys.ensure)
                )
                for g in ca.generations
            ),
        )
        for name, ca in world.core.registry.snapshot().items()
    }
    world.core.registry.replace(swapped)
    cas.backend.connections += 1


def test_other_keys_behind_the_labels_are_unavailable_until_the_right_ones_return(
    make_world: WorldFactory, own_cas: CASet, linter: Linter
) -> None:
    world = make_world(cas=own_cas)
    world.core.probe()
    issue(world, force_new=True)

    _swap(world, own_cas, linter, lambda name, n: generate_private_key(KeyAlgorithm.ECDSA_P256))
    with pytest.raises(Unavailable, match=MISMATCH):
        world.core.probe()
    with pytest.raises(Unavailable, match=MISMATCH):
        issue(world, force_new=True)
    assert not world.events("certificate.issued")[1:], "nothing signed by the wrong key"

    _swap(world, own_cas, linter, lambda name, n: _key_of(own_cas, name, n))
    world.core.probe()
    issue(world, force_new=True)
    assert len(world.events("certificate.issued")) == 2


def test_keys_are_checked_again_only_after_a_reconnect(
    make_world: WorldFactory, own_cas: CASet, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = make_world(cas=own_cas)
    checks: list[int] = []
    original = Signer.signs_for

    def counting(self: Signer, public_key: CAPublicKey) -> bool:
        checks.append(1)
        return original(self, public_key)

    monkeypatch.setattr(Signer, "signs_for", counting)
    world.core.probe()
    generations = len(list(world.core.registry.generations()))
    assert len(checks) == generations, "the first probe checks every key"
    world.core.probe()
    issue(world, force_new=True)
    assert len(checks) == generations, "no reconnect, no new check"
    own_cas.backend.connections += 1
    issue(world, force_new=True)
    assert len(checks) == 2 * generations, "a reconnect: checked before the next signature"
