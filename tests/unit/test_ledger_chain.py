"""ledger/chain.py and ledger/audit.py: the hash chain, and a record committed with the
state change it records, in one transaction, on each store."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubeca_client.errors import InvalidArgument, NotFound, Unavailable
from kubeca_server.ledger.audit import Entry
from kubeca_server.ledger.chain import GENESIS, ChainRow, canonical, first_broken_link, link_hash
from kubeca_server.store import CertificateRow, TokenRecord
from kubeca_server.store.changes import AddCertificate, AddToken, RevokeCertificate, RevokeToken
from kubeca_server.store.memory import MemoryStore
from kubeca_server.store.sqlite import SQLiteStore

from tests.unit.conftest import World, WorldFactory, chain, inventory

T0 = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture(params=["memory", "sqlite"])
def any_world(request: pytest.FixtureRequest, make_world: WorldFactory) -> World:
    """A world over each store: the ledger must behave the same on both."""
    return make_world(sqlite=request.param == "sqlite")


def rows_of(count: int) -> list[ChainRow]:
    """A well-formed chain of ``count`` records, built by hand."""
    rows, prev = [], GENESIS
    for seq in range(1, count + 1):
        body = canonical({"event": "e", "n": seq, "seq": seq})
        rows.append(ChainRow(seq, body, prev, link_hash(prev, body)))
        prev = rows[-1].hash
    return rows


def rechained(rows: list[ChainRow]) -> list[ChainRow]:
    """``rows`` with every link recomputed, as someone with write access could."""
    out, prev = [], GENESIS
    for row in rows:
        out.append(ChainRow(row.seq, row.record, prev, link_hash(prev, row.record)))
        prev = out[-1].hash
    return out


def inventory_row(serial: str, **changes: Any) -> CertificateRow:
    fields: dict[str, Any] = {
        "serial": serial,
        "authority": "etcd-ca",
        "profile": "etcd-healthcheck-client",
        "subject": "CN=kube-etcd-healthcheck-client",
        "sans": (),
        "public_key_sha256": "ab" * 32,
        "fingerprint_sha256": "cd" * 32,
        "not_before": T0,
        "not_after": T0 + timedelta(seconds=900),
        "caller": "test-caller",
        "request_fingerprint": "request-1",
        "certificate_pem": "-----BEGIN CERTIFICATE-----\n",
    }
    fields.update(changes)
    return CertificateRow(**fields)


def token_record() -> TokenRecord:
    return TokenRecord(
        "abcdef", "00" * 32, ("kubelet-client",), "worker-1", (), T0, "test-caller", T0
    )


def issued(serial: str) -> Entry:
    return Entry(
        "certificate.issued", {"serial": serial}, change=AddCertificate(inventory_row(serial))
    )


def events(world: World) -> list[str]:
    return [row.fields()["event"] for row in chain(world.store)]


# --- the chain -----------------------------------------------------------------------------


def test_canonical_json_is_sorted_compact_and_ascii() -> None:
    assert canonical({"b": 1, "a": "é", "c": [1, 2]}) == '{"a":"\\u00e9","b":1,"c":[1,2]}'


def test_each_stored_record_carries_its_sequence_number_and_the_previous_hash(
    any_world: World,
) -> None:
    for n in range(4):
        any_world.ledger.commit(Entry("e", {"n": n}))
    rows = chain(any_world.store)
    assert [row.seq for row in rows] == [1, 2, 3, 4]
    assert rows[0].prev_hash == GENESIS
    for before, row in itertools.pairwise(rows):
        assert row.prev_hash == before.hash
    for row in rows:
        assert json.loads(row.record)["seq"] == row.seq
        assert row.hash == link_hash(row.prev_hash, row.record)
    assert first_broken_link(rows) is None
    with any_world.store.unit(read_only=True) as unit:
        assert unit.audit.head() == rows[-1]
        assert unit.audit.rows(2, 1) == rows[2:3]


def test_an_edited_record_breaks_the_chain_at_that_record() -> None:
    rows = rows_of(5)
    rows[2] = dataclasses.replace(rows[2], record=rows[2].record.replace('"n":3', '"n":33'))
    broken = first_broken_link(rows)
    assert broken is not None
    assert broken[0] == 3
    assert "altered" in broken[1]


def test_a_deleted_record_is_reported_missing() -> None:
    rows = rows_of(5)
    del rows[2]
    assert first_broken_link(rows) == (3, "record 3 is missing (next present: 4)")


def test_swapped_record_texts_are_reported_at_the_first_moved_record() -> None:
    rows = rows_of(5)
    rows[1], rows[3] = (
        dataclasses.replace(rows[1], record=rows[3].record),
        dataclasses.replace(rows[3], record=rows[1].record),
    )
    assert first_broken_link(rows) == (2, "record 2 holds sequence number 4 (moved?)")


def test_an_inserted_record_breaks_the_chain_at_the_record_it_displaced() -> None:
    rows = rows_of(5)
    # The intruder links its record properly to record 2 and renumbers the rest.
    body = canonical({"event": "forged", "seq": 3})
    forged = ChainRow(3, body, rows[1].hash, link_hash(rows[1].hash, body))
    shifted = [dataclasses.replace(row, seq=row.seq + 1) for row in rows[2:]]
    broken = first_broken_link([*rows[:2], forged, *shifted])
    assert broken == (4, "record 4 holds sequence number 3 (moved?)")


def test_a_relinked_record_that_does_not_follow_its_predecessor_is_reported() -> None:
    rows = rows_of(4)
    rows[2] = dataclasses.replace(rows[2], prev_hash="f" * 64)
    assert first_broken_link(rows) == (3, "record 3 does not follow record 2")


def test_a_record_that_is_not_a_json_object_is_reported_not_raised() -> None:
    rows = rows_of(3)
    rows[1] = dataclasses.replace(rows[1], record="[1, 2]")
    assert rows[1].fields() == {}
    rows[2] = dataclasses.replace(rows[2], record="{not json")
    assert rows[2].fields() == {}
    assert first_broken_link(rows) == (2, "record 2 holds sequence number None (moved?)")


def test_rewritten_history_and_a_cut_tail_pass_the_walk_alone() -> None:
    """What only a signed checkpoint can catch (see test_ledger_verify.py)."""
    rows = rows_of(5)
    rows[1] = dataclasses.replace(rows[1], record=rows[1].record.replace('"n":2', '"n":22'))
    assert first_broken_link(rechained(rows)) is None
    assert first_broken_link(rows_of(5)[:3]) is None


# --- what a record says ----------------------------------------------------------------------


def test_a_record_holds_its_fields_event_level_time_and_worker(make_world: WorldFactory) -> None:
    world = make_world(clock=lambda: T0)
    row = world.ledger.commit(
        Entry("thing.happened", {"who": "alice", "count": 3, "nested": {"a": [1]}}, "warning")
    )
    record = row.fields()
    assert record == {
        "who": "alice",
        "count": 3,
        "nested": {"a": [1]},
        "event": "thing.happened",
        "level": "warning",
        "time": T0.isoformat(),
        "worker": os.getpid(),
        "seq": 1,
    }
    assert datetime.fromisoformat(record["time"]).tzinfo is not None


def test_an_unknown_severity_is_refused_and_writes_nothing(world: World) -> None:
    with pytest.raises(ValueError, match="unknown severity 'loud'"):
        world.ledger.commit(Entry("e", severity="loud"))
    assert chain(world.store) == []


def test_fields_cannot_overwrite_what_the_ledger_says(world: World) -> None:
    record = world.ledger.commit(Entry("real", {"event": "fake", "level": "info"})).fields()
    assert (record["event"], record["level"]) == ("real", "info")


# --- refusals ----------------------------------------------------------------------------------


def test_a_refusal_is_one_record_of_its_status_reason_and_context(world: World) -> None:
    error = InvalidArgument(
        "request is not a valid IssueCertificateRequest",
        {"requested_subject": "CN=x", "profile": "from-the-context"},
    )
    world.ledger.refusal(
        "request.refused",
        error,
        {"method": "IssueCertificate", "caller": "c", "peer": "ipv4:10.0.0.1:1", "profile": "p"},
    )
    (record,) = world.records()
    assert record["event"] == "request.refused"
    assert (record["outcome"], record["level"]) == ("refused", "warning")
    assert record["method"] == "IssueCertificate"
    assert record["reason"] == error.message
    assert record["status"] == "INVALID_ARGUMENT"
    assert record["peer"] == "ipv4:10.0.0.1:1"
    assert record["requested_subject"] == "CN=x"
    assert record["profile"] == "p"  # what the API layer saw wins over the context


def test_an_unexpected_error_is_recorded_as_internal_without_its_details(world: World) -> None:
    world.ledger.refusal("request.refused", KeyError("/etc/secret/path"), {"caller": "c"})
    (record,) = world.records()
    assert (record["outcome"], record["status"], record["level"]) == ("error", "INTERNAL", "error")
    assert record["reason"] == "internal error"
    assert "/etc/secret" not in json.dumps(record)


# --- a record and its change, in one transaction -----------------------------------------------


def test_an_inventory_row_is_committed_with_its_record(make_world: WorldFactory) -> None:
    world = make_world(sqlite=True)
    row = world.ledger.commit(issued("0a"))
    with world.store.unit(read_only=True) as unit:
        found = unit.inventory.find("0a")
    assert found is not None
    assert found.audit_seq == row.seq
    # Committed, not just written: another connection sees both, and durably (WAL, FULL).
    assert isinstance(world.store, SQLiteStore)
    with sqlite3.connect(world.store.path) as other:
        assert other.execute("SELECT seq FROM audit_chain").fetchall() == [(row.seq,)]
        assert other.execute("SELECT audit_seq FROM certificates").fetchall() == [(row.seq,)]
        assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_a_record_whose_change_fails_is_rolled_back(any_world: World) -> None:
    any_world.ledger.commit(issued("0a"))
    with pytest.raises((sqlite3.IntegrityError, ValueError)):
        any_world.ledger.commit(issued("0a"))  # the same serial twice
    assert [row.seq for row in chain(any_world.store)] == [1]
    assert [row.serial for row in inventory(any_world.store)] == ["0a"]
    assert any_world.ledger.commit(Entry("next")).seq == 2
    assert [r["seq"] for r in any_world.records()] == [1, 2]


def test_an_issued_certificate_ends_its_idempotency_claim(any_world: World) -> None:
    with any_world.store.unit() as unit:
        assert unit.claims.claim("request-1", T0, T0 - timedelta(seconds=30))
    any_world.ledger.commit(issued("0a"))
    with any_world.store.unit() as unit:
        assert unit.claims.claim("request-1", T0, T0 - timedelta(seconds=30))


def test_a_revocation_is_committed_with_its_record(any_world: World) -> None:
    any_world.ledger.commit(issued("0a"))
    row = any_world.ledger.commit(
        Entry("certificate.revoked", change=RevokeCertificate("0a", T0, "key_compromise"))
    )
    with any_world.store.unit(read_only=True) as unit:
        revoked = unit.inventory.find("0a")
        listed = unit.inventory.revoked("etcd-ca")
    assert revoked is not None
    assert (revoked.revoked_at, revoked.revocation_reason) == (T0, "key_compromise")
    assert [r.serial for r in listed] == ["0a"]
    assert row.seq == 2


def test_revoking_an_unknown_or_revoked_serial_writes_no_record(any_world: World) -> None:
    any_world.ledger.commit(issued("0a"))
    any_world.ledger.commit(Entry("revoked", change=RevokeCertificate("0a", T0, "superseded")))
    for serial in ("0a", "ff"):
        with pytest.raises(NotFound, match="no unrevoked certificate"):
            any_world.ledger.commit(
                Entry("revoked", change=RevokeCertificate(serial, T0, "superseded"))
            )
    assert [row.seq for row in chain(any_world.store)] == [1, 2]


def test_a_token_exists_only_with_its_record_and_is_revoked_only_with_one(
    any_world: World,
) -> None:
    any_world.ledger.commit(Entry("token.created", change=AddToken(token_record())))
    any_world.ledger.commit(Entry("token.revoked", change=RevokeToken("abcdef", T0)))
    for token_id in ("abcdef", "zzzzzz"):  # revoked already; never existed
        with pytest.raises(NotFound, match="no unrevoked bootstrap token"):
            any_world.ledger.commit(Entry("token.revoked", change=RevokeToken(token_id, T0)))
    assert events(any_world) == ["token.created", "token.revoked"]
    with any_world.store.unit(read_only=True) as unit:
        token = unit.tokens.find("abcdef")
    assert token is not None and token.revoked


def test_nothing_is_recorded_when_the_store_cannot_be_written(world: World) -> None:
    assert isinstance(world.store, MemoryStore)
    world.store.available = False
    with pytest.raises(Unavailable):
        world.ledger.commit(issued("0a"))
    world.store.available = True
    assert chain(world.store) == []
    assert inventory(world.store) == []
    assert world.audit_path.read_text() == ""
