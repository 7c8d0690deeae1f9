"""Ledger.commit under concurrency: many entries, one unit of work each batch, and an
entry whose change fails is undone alone."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubeca_client.errors import NotFound
from kubeca_server.ledger.audit import Entry, Ledger
from kubeca_server.ledger.chain import first_broken_link
from kubeca_server.ledger.mirror import Mirror
from kubeca_server.store.changes import RevokeCertificate
from kubeca_server.store.roles import Store, UnitOfWork
from kubeca_server.store.sqlite import SQLiteStore


class CountingStore:
    """A store that counts units of work, and holds each one open a moment so that
    concurrent commits pile up behind it (as they do behind an fsync)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.units = 0
        self.lock = threading.Lock()

    def unit(self, *, read_only: bool = False) -> AbstractContextManager[UnitOfWork]:
        if not read_only:
            with self.lock:
                self.units += 1
            threading.Event().wait(0.01)
        return self.inner.unit(read_only=read_only)

    def probe(self) -> None:
        self.inner.probe()

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def counting(tmp_path: Path) -> Iterator[tuple[Ledger, CountingStore]]:
    store = CountingStore(SQLiteStore(tmp_path / "k.db", migrate=True))
    ledger = Ledger(store, Mirror(tmp_path / "audit.log"), lambda: datetime.now(UTC))
    yield ledger, store
    ledger.close()
    store.close()


def test_concurrent_commits_share_units_of_work_and_each_gets_its_own_record(
    counting: tuple[Ledger, CountingStore], tmp_path: Path
) -> None:
    ledger, store = counting
    with ThreadPoolExecutor(16) as pool:
        rows = list(pool.map(lambda i: ledger.commit(Entry("e", {"i": i})), range(160)))
    assert sorted(r.seq for r in rows) == list(range(1, 161))
    assert [r.fields()["i"] for r in rows] == list(range(160))
    assert store.units < 160  # batched: fewer transactions than records
    with store.unit(read_only=True) as unit:
        chain = unit.audit.rows(0, 1000)
    assert first_broken_link(chain) is None
    # The mirror holds every record, in order.
    lines = (tmp_path / "audit.log").read_text().splitlines()
    assert [json.loads(line)["seq"] for line in lines] == list(range(1, 161))


def test_an_entry_whose_change_fails_is_undone_alone(
    counting: tuple[Ledger, CountingStore],
) -> None:
    ledger, store = counting
    barrier = threading.Barrier(9)

    def commit(i: int) -> Any:
        barrier.wait()
        change = RevokeCertificate("no-such-serial", datetime.now(UTC), "x") if i == 4 else None
        try:
            return ledger.commit(Entry("e", {"i": i}, change=change))
        except NotFound as exc:
            return exc

    with ThreadPoolExecutor(9) as pool:
        outcomes = list(pool.map(commit, range(9)))
    assert isinstance(outcomes[4], NotFound)
    written = [o for o in outcomes if not isinstance(o, NotFound)]
    assert len(written) == 8
    with store.unit(read_only=True) as unit:
        chain = unit.audit.rows(0, 100)
    assert sorted(r.fields()["i"] for r in chain) == [0, 1, 2, 3, 5, 6, 7, 8]
    assert first_broken_link(chain) is None
