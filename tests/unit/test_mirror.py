"""ledger/mirror.py: the audit log's JSON lines, rebuilt from the chain.

The chain in the store is the durable record, committed before an answer leaves; the
file mirrors it, one line per record, in order, never a gap, never twice, whoever
writes and whatever died half way.
"""

from __future__ import annotations

import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubeca_client.errors import Unavailable
from kubeca_server.ledger.audit import Entry, Ledger
from kubeca_server.ledger.mirror import Mirror, last_seq, mirror_line
from kubeca_server.ledger.verify import Verification, check_mirror
from kubeca_server.store.memory import MemoryStore
from kubeca_server.store.sqlite import SQLiteStore

from tests.unit.conftest import World, WorldFactory, chain, issue
from tests.unit.helpers import read_audit


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def ledger(store: MemoryStore, tmp_path: Path) -> Iterator[Ledger]:
    opened = Ledger(store, Mirror(tmp_path / "audit.log"))
    yield opened
    opened.close()


def committed_behind_the_mirrors_back(store: MemoryStore, *events: str) -> None:
    """Records a worker committed and died before mirroring (kill -9 in between)."""
    with store.unit() as unit:
        for event in events:
            unit.audit.append({"event": event})


def problems_of(path: Path, store: MemoryStore | SQLiteStore) -> Verification:
    result = Verification()
    with store.unit(read_only=True) as unit:
        rows = unit.audit.rows(0, 100_000)
    check_mirror(path, rows, result)
    return result


def test_each_json_line_mirrors_its_chain_row(world: World) -> None:
    rows = [world.ledger.commit(Entry("thing.happened", {"n": n})) for n in range(3)]
    lines = world.records()
    assert [row.seq for row in rows] == [1, 2, 3]
    assert [(r["seq"], r["prev_hash"], r["hash"]) for r in lines] == [
        (row.seq, row.prev_hash, row.hash) for row in chain(world.store)
    ]
    for line, row in zip(lines, rows, strict=True):
        assert world.audit_path.read_text().splitlines()[row.seq - 1] == mirror_line(row)
        stored = row.fields()
        assert (stored["event"], stored["n"], stored["time"]) == (
            line["event"],
            line["n"],
            line["time"],
        )


def test_an_issued_record_is_in_the_chain_and_the_file_before_issue_returns(
    make_world: WorldFactory,
) -> None:
    world = make_world(sqlite=True)
    issued = issue(world, "admin")
    assert isinstance(world.store, SQLiteStore)
    again = SQLiteStore(world.store.path)  # another connection: what is committed
    try:
        with again.unit(read_only=True) as unit:
            (row,) = unit.audit.rows()
            assert unit.inventory.find(issued.serial_hex) is not None
    finally:
        again.close()
    assert row.fields()["serial"] == issued.serial_hex
    (line,) = world.records()
    assert (line["event"], line["serial"]) == ("certificate.issued", issued.serial_hex)


def test_records_append_in_order(ledger: Ledger, tmp_path: Path) -> None:
    for i in range(3):
        ledger.commit(Entry("e", {"n": i}))
    assert [r["n"] for r in read_audit(tmp_path / "audit.log")] == [0, 1, 2]


def test_reopening_appends_and_repeats_nothing(store: MemoryStore, tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    first = Ledger(store, Mirror(path))
    first.commit(Entry("one"))
    first.close()
    second = Ledger(store, Mirror(path))
    second.sync_mirror()  # what a start does
    second.commit(Entry("two"))
    second.close()
    assert [(r["seq"], r["event"]) for r in read_audit(path)] == [(1, "one"), (2, "two")]


def test_the_audit_file_is_private(ledger: Ledger, tmp_path: Path) -> None:
    ledger.commit(Entry("e"))
    assert stat.S_IMODE((tmp_path / "audit.log").stat().st_mode) == 0o600


def test_the_mirror_creates_its_directory(store: MemoryStore, tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "audit.log"
    mirror = Mirror(path)
    try:
        Ledger(store, mirror).commit(Entry("e"))
    finally:
        mirror.close()
    assert [r["event"] for r in read_audit(path)] == ["e"]


# --- catching up -----------------------------------------------------------------------------


def test_records_a_dead_worker_never_mirrored_are_appended_by_the_next_commit(
    ledger: Ledger, store: MemoryStore, tmp_path: Path
) -> None:
    ledger.commit(Entry("before"))
    committed_behind_the_mirrors_back(store, "lost-1", "lost-2")
    path = tmp_path / "audit.log"
    lagging = problems_of(path, store)
    assert lagging.problems == []
    assert lagging.notes and "lags 2 records behind" in lagging.notes[0]
    ledger.commit(Entry("after"))
    assert [(r["seq"], r["event"]) for r in read_audit(path)] == [
        (1, "before"),
        (2, "lost-1"),
        (3, "lost-2"),
        (4, "after"),
    ]
    assert problems_of(path, store) == Verification()


def test_rows_that_follow_the_file_are_appended_without_reading_the_chain_back(
    tmp_path: Path,
) -> None:
    class Counting(MemoryStore):
        reads = 0

        def unit(self, *, read_only: bool = False) -> Any:
            Counting.reads += read_only
            return super().unit(read_only=read_only)

    store = Counting()
    ledger = Ledger(store, Mirror(tmp_path / "audit.log"))
    try:
        for n in range(5):
            ledger.commit(Entry("thing", {"n": n}))
        assert Counting.reads == 0
        # A gap (a writer that died between its commit and its mirror write): the file
        # is brought up from the chain, in order.
        committed_behind_the_mirrors_back(store, "lost")
        ledger.commit(Entry("after"))
        assert Counting.reads >= 1
    finally:
        ledger.close()
    assert [r["event"] for r in read_audit(tmp_path / "audit.log")] == [
        *["thing"] * 5,
        "lost",
        "after",
    ]
    assert problems_of(tmp_path / "audit.log", store) == Verification()


@pytest.mark.parametrize("size", [10, 4000, 5000, 70_000, 200_000])
def test_the_last_sequence_number_is_found_behind_a_line_of_any_length(
    store: MemoryStore, tmp_path: Path, size: int
) -> None:
    committed_behind_the_mirrors_back(store, "short")
    with store.unit() as unit:
        unit.audit.append({"event": "long", "padding": "x" * size})
    mirror = Mirror(tmp_path / "audit.log")
    try:
        assert mirror.sync(store) == 2
    finally:
        mirror.close()
    assert last_seq(tmp_path / "audit.log") == 2


def test_the_next_start_catches_up_too(store: MemoryStore, tmp_path: Path) -> None:
    committed_behind_the_mirrors_back(store, *(f"e{n}" for n in range(1200)))  # > one page
    mirror = Mirror(tmp_path / "audit.log")
    try:
        assert mirror.sync(store) == 1200
        assert mirror.sync(store) == 0
    finally:
        mirror.close()
    assert last_seq(tmp_path / "audit.log") == 1200
    assert problems_of(tmp_path / "audit.log", store).problems == []


def test_a_half_written_last_line_is_cut_and_written_whole(
    ledger: Ledger, store: MemoryStore, tmp_path: Path
) -> None:
    path = tmp_path / "audit.log"
    ledger.commit(Entry("one"))
    committed_behind_the_mirrors_back(store, "two")
    with path.open("a") as f:
        f.write(mirror_line(chain(store)[1])[:25])  # a crash (or a full disk) mid-write
    assert last_seq(path) == 0  # the last line is not a record
    ledger.commit(Entry("three"))
    assert [(r["seq"], r["event"]) for r in read_audit(path)] == [
        (1, "one"),
        (2, "two"),
        (3, "three"),
    ]
    assert problems_of(path, store) == Verification()


def test_a_file_that_is_one_partial_line_is_rebuilt_whole(
    store: MemoryStore, tmp_path: Path
) -> None:
    path = tmp_path / "audit.log"
    path.write_text('{"event": "one", "se')
    committed_behind_the_mirrors_back(store, "one")
    mirror = Mirror(path)
    try:
        mirror.sync(store)
    finally:
        mirror.close()
    assert [r["event"] for r in read_audit(path)] == ["one"]


def test_a_mirror_that_cannot_be_written_loses_nothing(store: MemoryStore, tmp_path: Path) -> None:
    full = Ledger(store, Mirror(Path("/dev/full")))  # every write fails with ENOSPC
    try:
        row = full.commit(Entry("kept"))  # logged, not raised: the chain holds it
    finally:
        full.close()
    assert [r.fields()["event"] for r in chain(store)] == ["kept"]
    mirror = Mirror(tmp_path / "audit.log")
    try:
        mirror.sync(store)
    finally:
        mirror.close()
    assert read_audit(tmp_path / "audit.log")[0]["hash"] == row.hash


def test_an_unreachable_store_commits_nothing_and_mirrors_nothing(
    ledger: Ledger, store: MemoryStore, tmp_path: Path
) -> None:
    ledger.commit(Entry("one"))
    store.available = False
    with pytest.raises(Unavailable):
        ledger.commit(Entry("two"))
    store.available = True
    assert [r["event"] for r in read_audit(tmp_path / "audit.log")] == ["one"]


def test_workers_sharing_one_file_write_every_record_once_in_order(tmp_path: Path) -> None:
    """Two worker processes: each its own connection and its own open file."""
    database, path = tmp_path / "kubeca.db", tmp_path / "audit.log"
    stores = [SQLiteStore(database, migrate=True), SQLiteStore(database)]
    ledgers = [Ledger(store, Mirror(path)) for store in stores]
    try:

        def work(ledger: Ledger, name: str) -> None:
            for n in range(25):
                ledger.commit(Entry("e", {"who": name, "n": n}))

        threads = [threading.Thread(target=work, args=(ledgers[i % 2], f"t{i}")) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        lines = read_audit(path)
        assert [r["seq"] for r in lines] == list(range(1, 101))
        assert sorted((r["who"], r["n"]) for r in lines) == sorted(
            (f"t{i}", n) for i in range(4) for n in range(25)
        )
        assert problems_of(path, stores[0]) == Verification()
    finally:
        for ledger in ledgers:
            ledger.close()
        for store in stores:
            store.close()


# --- the mirror checked against the chain ------------------------------------------------------


def test_an_edited_mirror_line_is_a_problem(
    ledger: Ledger, store: MemoryStore, tmp_path: Path
) -> None:
    path = tmp_path / "audit.log"
    for n in range(3):
        ledger.commit(Entry("e", {"n": n}))
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace('"n": 1', '"n": 11')
    path.write_text("\n".join(lines) + "\n")
    assert problems_of(path, store).problems == ["mirror line 2 differs from chain record 2"]


def test_a_missing_or_foreign_mirror_line_is_a_problem(
    ledger: Ledger, store: MemoryStore, tmp_path: Path
) -> None:
    path = tmp_path / "audit.log"
    for n in range(3):
        ledger.commit(Entry("e", {"n": n}))
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[2], '{"seq": 99}', "not json"]) + "\n")
    assert problems_of(path, store).problems == [
        "mirror line 2 holds record 3 after record 1 (records are missing or out of order)",
        "mirror line 3 is no record of the chain",
        "mirror line 4 is no record of the chain",
    ]


def test_half_a_last_line_is_a_crash_to_note_not_an_edit(
    ledger: Ledger, store: MemoryStore
) -> None:
    for n in range(3):
        ledger.commit(Entry("thing.happened", {"n": n}))
    text = ledger._mirror.path.read_text()
    ledger._mirror.path.write_text(text[: text.rindex("\n", 0, -1) + 12])
    result = problems_of(ledger._mirror.path, store)
    assert result.problems == []
    assert any("half a line" in note for note in result.notes)
    assert any("lags 1 records behind" in note for note in result.notes)
    ledger.sync_mirror()
    assert problems_of(ledger._mirror.path, store).notes == []
