"""audit.py: JSON lines, one per decision, durable before the answer leaves."""

from __future__ import annotations

import json
import os
import stat
from datetime import datetime
from pathlib import Path

import pytest
from kubeca_client.errors import Unavailable
from kubeca_server.audit import AuditLog
from kubeca_server.authority import Authority, Caller, IssueRequest
from kubeca_server.lint import Linter

from tests.unit.conftest import GRANTS, CASet
from tests.unit.helpers import make_csr, read_audit


def test_record_is_one_json_line_with_time_level_event_and_fields(
    audit: AuditLog, audit_path: Path
) -> None:
    audit.record("thing.happened", "warning", who="alice", count=3, nested={"a": [1]})
    lines = audit_path.read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["event"] == "thing.happened"
    assert record["level"] == "warning"
    assert record["who"] == "alice"
    assert record["count"] == 3
    assert record["nested"] == {"a": [1]}
    assert datetime.fromisoformat(record["time"]).tzinfo is not None


def test_records_append(audit: AuditLog, audit_path: Path) -> None:
    for i in range(3):
        audit.record("e", n=i)
    assert [r["n"] for r in read_audit(audit_path)] == [0, 1, 2]


def test_reopening_appends_rather_than_truncates(audit_path: Path) -> None:
    first = AuditLog(audit_path)
    first.record("one")
    first.close()
    second = AuditLog(audit_path)
    second.record("two")
    second.close()
    assert [r["event"] for r in read_audit(audit_path)] == ["one", "two"]


def test_audit_file_is_private(audit: AuditLog, audit_path: Path) -> None:
    audit.record("e")
    assert stat.S_IMODE(audit_path.stat().st_mode) == 0o600


def test_audit_creates_its_directory(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a" / "b" / "audit.log")
    log.record("e")
    log.close()
    assert log.path.exists()


def test_issued_record_is_fsynced_before_issue_returns(
    authority: Authority, audit_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        real_fsync(fd)
        if Path(f"/proc/self/fd/{fd}").resolve() == audit_path.resolve():
            synced.append(audit_path.read_text())

    monkeypatch.setattr(os, "fsync", spy)  # the sink calls os.fsync(fd)
    issued = authority.issue(Caller("test-caller"), IssueRequest("admin", make_csr()))
    assert len(synced) == 1
    assert issued.serial_hex in synced[0]
    assert '"certificate.issued"' in synced[0]


def test_no_certificate_when_the_audit_log_cannot_be_written(ca_set: CASet, linter: Linter) -> None:
    full = AuditLog(Path("/dev/full"))  # every write fails with ENOSPC
    try:
        authority = Authority(ca_set.authorities, ca_set.config.leaf, full, linter, grants=GRANTS)
        with pytest.raises(Unavailable, match="audit log cannot be written"):
            authority.issue(Caller("test-caller"), IssueRequest("admin", make_csr()))
    finally:
        full.close()


def test_record_reports_a_write_failure_as_unavailable() -> None:
    full = AuditLog(Path("/dev/full"))
    try:
        with pytest.raises(Unavailable, match="audit log cannot be written"):
            full.record("e")
    finally:
        full.close()
