"""Each page of a listing costs SQLite a bounded amount of work, whatever the size of the
table (issue 10, defect 3): counted in virtual-machine steps, not in time, for every
filter a listing can combine, at 2,000 and at 20,000 rows."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kubeca_server.store import CertificateRow, InventoryQuery, TokenRecord
from kubeca_server.store.sqlite import SQLiteStore

NOW = datetime(2030, 1, 1, tzinfo=UTC)
PAGE = 50
QUERIES = {
    "everything": InventoryQuery(),
    "authority": InventoryQuery(authority="kubernetes-ca"),
    "other authority": InventoryQuery(authority="etcd-ca"),
    "profile": InventoryQuery(profile="kube-proxy"),
    "rare profile": InventoryQuery(profile="admin"),
    "revoked": InventoryQuery(revoked_only=True),
    "revoked of an authority": InventoryQuery(authority="kubernetes-ca", revoked_only=True),
    "revoked of a profile": InventoryQuery(profile="kube-proxy", revoked_only=True),
    "expiring": InventoryQuery(expiring_before=NOW + timedelta(hours=1)),
    "expiring of an authority": InventoryQuery(
        authority="kubernetes-ca", expiring_before=NOW + timedelta(hours=1)
    ),
}


def _row(n: int, authority: str = "kubernetes-ca", profile: str = "kube-proxy") -> CertificateRow:
    return CertificateRow(
        serial=f"{n:08x}",
        authority=authority,
        profile=profile,
        subject="CN=x",
        sans=(),
        public_key_sha256="0",
        fingerprint_sha256="0",
        not_before=NOW,
        not_after=NOW + timedelta(days=2, seconds=n),
        caller="op",
        request_fingerprint=f"r{n}",
        certificate_pem="",
        audit_seq=1,
    )


def _store(directory: Path, rows: int) -> SQLiteStore:
    store = SQLiteStore(directory / "kubeca.db", migrate=True)
    with store.unit() as unit:
        unit.audit.append({"event": "bulk"})
        for n in range(rows):
            unit.inventory.add(_row(n))
        for n in range(rows, rows + 3):  # a few of another CA, revoked
            unit.inventory.add(_row(n, "etcd-ca", "etcd-peer"))
            unit.inventory.revoke(f"{n:08x}", NOW, "superseded")
        for n in range(rows // 10):  # expired tokens pile up too
            unit.tokens.add(
                TokenRecord(
                    f"t{n:05d}",
                    "0",
                    ("kubelet-client",),
                    "n",
                    (),
                    NOW - timedelta(days=1),
                    "op",
                    NOW - timedelta(days=2),
                )
            )
    return store


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SQLiteStore, SQLiteStore]]:
    small = _store(tmp_path_factory.mktemp("small"), 2_000)
    large = _store(tmp_path_factory.mktemp("large"), 20_000)
    yield small, large
    small.close()
    large.close()


def _steps(store: SQLiteStore, work: object) -> int:
    counted = [0]

    def tick() -> int:
        counted[0] += 1
        return 0

    store._db.set_progress_handler(tick, 100)
    try:
        with store.unit(read_only=True) as unit:
            work(unit)  # type: ignore[operator]
    finally:
        store._db.set_progress_handler(None, 0)
    return counted[0]


@pytest.mark.parametrize("name", QUERIES)
def test_a_page_of_the_inventory_does_not_grow_with_the_table(
    stores: tuple[SQLiteStore, SQLiteStore], name: str
) -> None:
    query = QUERIES[name]
    small, large = (_steps(s, lambda unit: unit.inventory.page(query, None, PAGE)) for s in stores)
    # Ten times the rows: a scan would take ten times the steps; a range, the same.
    assert large <= 1.5 * small + 20, (name, small, large)


def test_a_page_of_live_tokens_does_not_grow_with_the_expired_ones(
    stores: tuple[SQLiteStore, SQLiteStore],
) -> None:
    small, large = (_steps(s, lambda unit: unit.tokens.page(NOW, None, PAGE)) for s in stores)
    assert large <= 1.5 * small + 20, (small, large)
