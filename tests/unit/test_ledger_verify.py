"""ledger/checkpoints.py and ledger/verify.py: the service CA's key signs the chain's head
now and then, and verification holds the chain, its checkpoints and the inventory against
one another."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from kubeca_server.keys import CAPrivateKey, sign_bytes
from kubeca_server.ledger.audit import Entry
from kubeca_server.ledger.chain import GENESIS, ChainRow, Checkpoint, canonical, link_hash
from kubeca_server.ledger.checkpoints import CHECKPOINT_EVENT, checkpoint
from kubeca_server.ledger.verify import InventoryEntry, checkpoint_is_genuine, verify
from kubeca_server.store.changes import AddCheckpoint
from kubeca_server.store.sqlite import SQLiteStore

from tests.unit.conftest import World, WorldFactory, chain
from tests.unit.helpers import rsa_key

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def signed(seq: int, head_hash: str, key: CAPrivateKey, at: datetime = T0) -> Checkpoint:
    unsigned = Checkpoint(seq, head_hash, at, b"")
    return dataclasses.replace(unsigned, signature=sign_bytes(key, unsigned.message()))


def rows_of(count: int) -> list[ChainRow]:
    rows, prev = [], GENESIS
    for seq in range(1, count + 1):
        body = canonical({"event": "e", "n": seq, "seq": seq})
        rows.append(ChainRow(seq, body, prev, link_hash(prev, body)))
        prev = rows[-1].hash
    return rows


def rechained(rows: list[ChainRow]) -> list[ChainRow]:
    out, prev = [], GENESIS
    for row in rows:
        out.append(ChainRow(row.seq, row.record, prev, link_hash(prev, row.record)))
        prev = out[-1].hash
    return out


def append(rows: list[ChainRow], record: dict[str, Any]) -> None:
    seq = len(rows) + 1
    prev = rows[-1].hash if rows else GENESIS
    body = canonical({**record, "seq": seq})
    rows.append(ChainRow(seq, body, prev, link_hash(prev, body)))


def issued_record(serial: str) -> dict[str, Any]:
    return {"event": "certificate.issued", "serial": serial, "fingerprint_sha256": f"fp-{serial}"}


def entry(serial: str, seq: int, revoked: bool = False) -> InventoryEntry:
    return InventoryEntry(serial, seq, f"fp-{serial}", revoked)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


# --- checkpoints ---------------------------------------------------------------------------


@pytest.mark.parametrize("key", [new_key(), rsa_key()], ids=["ecdsa", "rsa"])
def test_a_checkpoint_verifies_with_its_signers_key_only(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
) -> None:
    made = signed(7, "a" * 64, key)
    assert checkpoint_is_genuine(made, key.public_key())
    assert not checkpoint_is_genuine(made, new_key().public_key())


@pytest.mark.parametrize(
    "change",
    [{"seq": 8}, {"head_hash": "b" * 64}, {"signed_at": T0 + timedelta(seconds=1)}],
    ids=["seq", "head", "time"],
)
def test_a_checkpoint_with_any_field_changed_is_not_genuine(change: dict[str, Any]) -> None:
    key = new_key()
    forged = dataclasses.replace(signed(7, "a" * 64, key), **change)
    assert not checkpoint_is_genuine(forged, key.public_key())


def test_checkpoint_signs_the_head_with_the_service_ca_key(world: World) -> None:
    service = world.core.registry.service.issuing
    assert checkpoint(world.ledger, service.signer.sign_bytes, T0) is None  # an empty chain
    for n in range(3):
        world.ledger.commit(Entry("e", {"n": n}))
    made = checkpoint(world.ledger, service.signer.sign_bytes, T0)
    assert made is not None
    assert (made.seq, made.head_hash) == (3, chain(world.store)[2].hash)
    assert checkpoint_is_genuine(made, service.public_key)
    with world.store.unit(read_only=True) as unit:
        assert unit.checkpoints.all() == [made]
    last = world.records()[-1]
    assert (last["event"], last["checkpoint_seq"], last["head_hash"]) == (
        CHECKPOINT_EVENT,
        3,
        made.head_hash,
    )


def test_checkpoint_waits_for_its_minimum_age(world: World) -> None:
    sign = world.core.registry.service.issuing.signer.sign_bytes
    world.ledger.commit(Entry("e"))
    assert checkpoint(world.ledger, sign, T0, 3600) is not None
    world.ledger.commit(Entry("e"))
    assert checkpoint(world.ledger, sign, T0 + timedelta(minutes=59), 3600) is None
    assert checkpoint(world.ledger, sign, T0 + timedelta(minutes=61), 3600) is not None
    with world.store.unit(read_only=True) as unit:
        assert len(unit.checkpoints.all()) == 2


def test_nothing_new_but_its_own_record_means_nothing_to_sign(world: World) -> None:
    sign = world.core.registry.service.issuing.signer.sign_bytes
    world.ledger.commit(Entry("e"))
    assert checkpoint(world.ledger, sign, T0) is not None
    # The only record since is the checkpoint's own: signing it would loop for ever.
    assert checkpoint(world.ledger, sign, T0 + timedelta(days=1)) is None
    world.ledger.commit(Entry("e"))
    assert checkpoint(world.ledger, sign, T0 + timedelta(days=1)) is not None


def test_a_checkpoint_with_a_forged_signature_fails_verification(world: World) -> None:
    service = world.core.registry.service.issuing
    world.ledger.commit(Entry("e"))
    made = checkpoint(world.ledger, service.signer.sign_bytes, T0)
    assert made is not None
    forged = dataclasses.replace(made, signature=b"\x30\x00")
    with world.store.unit() as unit:
        AddCheckpoint(forged).apply(unit, 0)
        checkpoints = unit.checkpoints.all()
    result = verify(chain(world.store), checkpoints, [], service.public_key)
    assert result.problems == [f"checkpoint at record {made.seq} has no valid signature"]


def test_checkpoint_round_trips_its_time_exactly(make_world: WorldFactory) -> None:
    """signed_at is in the signed message, so the stored time must come back bit-exact."""
    world = make_world(sqlite=True)
    key = new_key()
    moment = datetime(2031, 5, 6, 7, 8, 9, 123457, tzinfo=UTC)
    world.ledger.commit(Entry("cp", change=AddCheckpoint(signed(1, "a" * 64, key, moment))))
    with world.store.unit(read_only=True) as unit:
        (back,) = unit.checkpoints.all()
    assert back.signed_at == moment
    assert checkpoint_is_genuine(back, key.public_key())


def test_checkpoints_survive_a_reopen(make_world: WorldFactory) -> None:
    world = make_world(sqlite=True)
    assert isinstance(world.store, SQLiteStore)
    made = signed(3, "a" * 64, new_key())
    world.ledger.commit(Entry("cp", change=AddCheckpoint(made)))
    again = SQLiteStore(world.store.path)
    try:
        with again.unit(read_only=True) as unit:
            assert unit.checkpoints.all() == [made]
    finally:
        again.close()


# --- verify ---------------------------------------------------------------------------------


def test_verify_passes_an_intact_chain_with_checkpoint_and_inventory() -> None:
    key = new_key()
    rows = rows_of(3)
    append(rows, issued_record("0a"))
    result = verify(rows, [signed(4, rows[-1].hash, key)], [entry("0a", 4)], key.public_key())
    assert result.problems == []
    assert (result.records, result.checkpoints, result.certificates) == (4, 1, 1)


def test_verify_catches_rewritten_history_only_through_the_checkpoint() -> None:
    key = new_key()
    rows = rows_of(6)
    made = signed(5, rows[4].hash, key)
    rows[1] = dataclasses.replace(rows[1], record=rows[1].record.replace('"n":2', '"n":22'))
    result = verify(rechained(rows), [made], [], key.public_key())
    assert result.problems == [
        "checkpoint at record 5 does not match the chain (history before it was rewritten)"
    ]


def test_verify_catches_records_cut_after_a_checkpoint() -> None:
    key = new_key()
    rows = rows_of(6)
    result = verify(rows[:3], [signed(5, rows[4].hash, key)], [], key.public_key())
    assert result.problems == [
        "checkpoint at record 5 names a record that is gone (records were deleted)"
    ]


def test_verify_reports_a_broken_chain() -> None:
    key = new_key()
    rows = rows_of(4)
    del rows[1]
    assert verify(rows, [], [], key.public_key()).problems == [
        "chain broken at record 2: record 2 is missing (next present: 3)"
    ]


def test_verify_reports_a_checkpoint_signed_by_another_key() -> None:
    key, forger = new_key(), new_key()
    rows = rows_of(3)
    result = verify(rows, [signed(3, rows[2].hash, forger)], [], key.public_key())
    assert result.problems == ["checkpoint at record 3 has no valid signature"]


def test_verify_reports_inventory_rows_without_their_issued_record() -> None:
    key = new_key()
    rows = rows_of(2)
    append(rows, issued_record("0a"))
    listed = [entry("0a", 3), entry("0b", 3), entry("0c", 1), entry("0d", 99)]
    problems = verify(rows, [], listed, key.public_key()).problems
    assert problems == [
        "certificate 0b has no matching audit record (record 3)",
        "certificate 0c has no matching audit record (record 1)",
        "certificate 0d has no matching audit record (record 99)",
    ]


def test_verify_reports_an_inventory_certificate_other_than_the_one_issued() -> None:
    key = new_key()
    rows = rows_of(2)
    append(rows, issued_record("0a"))
    swapped = InventoryEntry("0a", 3, "fp-other", False)
    assert verify(rows, [], [swapped], key.public_key()).problems == [
        "certificate 0a in the inventory is not the one record 3 issued (fingerprints differ)"
    ]


def test_verify_catches_an_inventory_pem_that_is_not_its_recorded_certificate() -> None:
    key = new_key()
    rows: list[ChainRow] = []
    append(rows, {"event": "certificate.issued", "serial": "0a", "fingerprint_sha256": "fp"})
    listed = InventoryEntry("0a", 1, "fp", False, pem_fingerprint_sha256="other")
    assert verify(rows, [], [listed], key.public_key()).problems == [
        "certificate 0a in the inventory is not the one record 1 issued (fingerprints differ)"
    ]


def test_verify_catches_a_certificate_issued_in_the_chain_but_gone_from_the_inventory() -> None:
    rows: list[ChainRow] = []
    append(rows, {"event": "certificate.issued", "serial": "0a"})
    assert verify(rows, [], [], new_key().public_key()).problems == [
        "certificate 0a was issued (per the chain) but is missing from the inventory"
    ]


def test_verify_holds_revocation_state_against_the_chain_both_ways() -> None:
    key = new_key()
    rows = rows_of(2)
    for serial, event in (("0a", "issued"), ("0b", "issued"), ("0a", "revoked")):
        append(rows, {**issued_record(serial), "event": f"certificate.{event}"})
    # 0a was revoked in the chain but not in the inventory; 0b the other way round.
    problems = verify(rows, [], [entry("0a", 3), entry("0b", 4, True)], key.public_key()).problems
    assert problems == [
        "certificate 0a is not revoked in the inventory, but the chain says otherwise",
        "certificate 0b is revoked in the inventory, but the chain says otherwise",
    ]
