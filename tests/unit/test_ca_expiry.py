"""CA expiry warnings: from a year before a CA's NotAfter, in the log and `ca status`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from kubeca_client.authorities import CLUSTER_CAS
from kubeca_server.app import build_core
from kubeca_server.ca import lifecycle
from kubeca_server.ca.lint import Linter
from kubeca_server.ledger.audit import Ledger
from kubeca_server.ledger.mirror import Mirror
from kubeca_server.maintenance import Maintenance
from kubeca_server.metrics import Metrics
from kubeca_server.verbs import generation_line
from structlog.testing import capture_logs

from tests.unit.conftest import CASet


def _warnings(cas: CASet, tmp_path: Path, linter: Linter, now: datetime) -> list[dict[str, object]]:
    ledger = Ledger(cas.store, Mirror(tmp_path / "audit.log"))
    core = build_core(cas.config, cas.backend, ledger, linter, lambda: now)
    maintenance = Maintenance(core.registry, core.crls, ledger, Metrics(enabled=False), lambda: now)
    with capture_logs() as logs:
        maintenance.observe_expiry()
    return [entry for entry in logs if entry["event"] == "ca.expiring"]


def test_a_ca_within_a_year_of_expiry_is_warned_about(
    short_ca_set: CASet, tmp_path: Path, linter: Linter
) -> None:
    warned = _warnings(short_ca_set, tmp_path, linter, datetime.now(UTC))
    # The cluster CAs live one day here; the service CA ten years.
    assert {w["authority"] for w in warned} == set(CLUSTER_CAS)
    assert all(str(w["remedy"]).startswith("kubeca-server ca rotate begin") for w in warned)


def test_a_ten_year_ca_is_not_warned_about_until_its_last_year(
    ca_set: CASet, tmp_path: Path, linter: Linter
) -> None:
    now = datetime.now(UTC)
    assert _warnings(ca_set, tmp_path / "now", linter, now) == []
    late = now + timedelta(days=3650 - 364)
    assert len(_warnings(ca_set, tmp_path / "late", linter, late)) == len(ca_set.config.authorities)


def test_ca_status_warns_for_an_expiring_generation(short_ca_set: CASet) -> None:
    (row,) = lifecycle.generation_rows(short_ca_set.store)["etcd-ca"]
    with short_ca_set.store.unit(read_only=True) as unit:
        line = generation_line(row, unit, short_ca_set.backend, datetime.now(UTC))
    assert "generation 1: issuing, key generated in the HSM, 0 unexpired leaves" in line
    assert (
        "WARNING: expires in 0 days; rotate it (kubeca-server ca rotate begin --authority etcd-ca)"
        in line
    )
