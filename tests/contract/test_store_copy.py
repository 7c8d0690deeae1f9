"""store/copy.py: everything an SQLite store holds, moved into each shared store, with
every chain record keeping its hash; a broken source or a used destination is refused."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
from kubeca_client.errors import FailedPrecondition
from kubeca_server.ledger.chain import Checkpoint, first_broken_link
from kubeca_server.store import GenerationRow, GenerationState, InventoryQuery, Provenance
from kubeca_server.store.changes import AddCertificate
from kubeca_server.store.copy import copy_store
from kubeca_server.store.sqlite import SQLiteStore

from tests.contract.test_store_contract import (
    SHARED,
    T0,
    Opener,
    append,
    certificate,
    chain,
    token,
)


@pytest.fixture(params=list(SHARED))
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """A destination: each store several processes share (SQLite, PostgreSQL)."""
    return SHARED[request.param](request, tmp_path)


def _populated(tmp_path: Path) -> SQLiteStore:
    store = SQLiteStore(tmp_path / "old.db", migrate=True)
    append(store, 3, note="before")
    with store.unit() as unit:
        unit.generations.add(
            GenerationRow(
                "etcd-ca",
                1,
                "kubeca/etcd-ca",
                "PEM",
                GenerationState.ISSUING,
                Provenance.GENERATED,
                T0,
            )
        )
        for serial in ("aa", "bb"):
            seq = unit.audit.append({"event": "certificate.issued", "serial": serial}).seq
            AddCertificate(certificate(serial)).apply(unit, seq)
        unit.inventory.revoke("bb", T0 + timedelta(hours=1), "superseded")
        unit.tokens.add(token("abcdef"))
        unit.tokens.add(token("revoked", created_at=T0 + timedelta(minutes=1)))
        assert unit.tokens.consume("abcdef", "kubelet-client", T0)
        unit.tokens.revoke("revoked", T0)
        unit.checkpoints.add(Checkpoint(5, unit.audit.head().hash, T0, b"sig"))  # type: ignore[union-attr]
        for _ in range(7):
            unit.crl_numbers.next("etcd-ca")
    return store


def test_a_copy_holds_everything_and_every_record_keeps_its_hash(
    shared: Opener, tmp_path: Path
) -> None:
    old = _populated(tmp_path)
    new = shared.open()
    try:
        copied = copy_store(old, new)
        rows = chain(new)
        assert rows == chain(old) and first_broken_link(rows) is None
        assert copied.records == 5 and copied.head_hash == rows[-1].hash
        with new.unit(read_only=True) as unit, old.unit(read_only=True) as was:
            assert unit.inventory.page(InventoryQuery(), None, 10) == was.inventory.page(
                InventoryQuery(), None, 10
            )
            used = unit.tokens.find("abcdef")
            revoked = unit.tokens.find("revoked")
            assert used is not None and used.used_profiles == ("kubelet-client",)
            assert revoked is not None and revoked.revoked
            assert unit.checkpoints.all() == was.checkpoints.all()
            assert unit.generations.all() == was.generations.all()
            assert unit.crl_numbers.current("etcd-ca") == 7
        # The next number goes on from there, never back.
        with new.unit() as unit:
            assert unit.crl_numbers.next("etcd-ca") == 8
    finally:
        new.close()
        old.close()


def test_a_destination_that_holds_records_is_refused_and_left_as_it_was(
    shared: Opener, tmp_path: Path
) -> None:
    old = _populated(tmp_path)
    new = shared.open()
    try:
        append(new, 1, note="already here")
        with pytest.raises(FailedPrecondition, match="not empty"):
            copy_store(old, new)
        assert [r.fields()["note"] for r in chain(new)] == ["already here"]
    finally:
        new.close()
        old.close()


def test_a_broken_source_chain_is_not_copied(shared: Opener, tmp_path: Path) -> None:
    old = _populated(tmp_path)
    old.close()
    with sqlite3.connect(tmp_path / "old.db") as db:
        db.execute(
            "UPDATE audit_chain SET record = replace(record, 'before', 'after') WHERE seq = 2"
        )
    old = SQLiteStore(tmp_path / "old.db")
    new = shared.open()
    try:
        with pytest.raises(FailedPrecondition, match="broken at record 2"):
            copy_store(old, new)
        assert chain(new) == []
    finally:
        new.close()
        old.close()
