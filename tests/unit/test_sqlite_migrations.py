"""Migrations 3 and 4 keep what a version-2 database held: generations gain an empty
cross-certificate and no state change time, and serve refuses the old schema first."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from kubeca_client.errors import ConfigError
from kubeca_server.store.records import GenerationState, Provenance
from kubeca_server.store.sqlite import SQLiteStore
from kubeca_server.store.sqlite_schema import MIGRATIONS


def _version_2(path: Path) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    for number, script in enumerate(MIGRATIONS[:2], 1):
        db.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")
    db.execute(
        "INSERT INTO ca_generations VALUES ('etcd-ca', 1, 'kubeca/etcd-ca', 'PEM', 'issuing', "
        "'generated', 1700000000.0, 'ca', '')"
    )
    db.close()


def test_a_version_2_database_is_refused_until_migrated_and_keeps_its_generations(
    tmp_path: Path,
) -> None:
    path = tmp_path / "kubeca.db"
    _version_2(path)
    with pytest.raises(ConfigError, match="schema version 2"):
        SQLiteStore(path)
    store = SQLiteStore(path, migrate=True)
    try:
        with store.unit(read_only=True) as unit:
            (row,) = unit.generations.all()
    finally:
        store.close()
    assert (row.authority, row.generation, row.state) == ("etcd-ca", 1, GenerationState.ISSUING)
    assert row.provenance is Provenance.GENERATED
    assert row.cross_certificate_pem == ""
    assert row.state_changed_at is None
