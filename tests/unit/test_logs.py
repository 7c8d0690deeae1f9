"""Application logs: each record reaches stderr as one whole line in one write, so the
lines of workers that share stderr cannot be spliced into one another."""

from __future__ import annotations

import json

import pytest
import structlog
from kubeca_server.logs import configure_logging


class RecordingStream:
    """A non-terminal stderr that keeps every write() it is given, separately."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def test_each_record_is_one_write_of_one_json_line(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = RecordingStream()
    monkeypatch.setattr("sys.stderr", stream)
    try:
        configure_logging()
        log = structlog.get_logger("kubeca.test")
        log.info("server.listening", port=1)
        log.warning("worker.failed", error="x" * 10_000)
    finally:
        structlog.reset_defaults()
    assert len(stream.writes) == 2
    for write in stream.writes:
        assert write.endswith("\n") and write.count("\n") == 1
    records = [json.loads(w) for w in stream.writes]
    assert [r["event"] for r in records] == ["server.listening", "worker.failed"]
    assert records[1]["level"] == "warning" and len(records[1]["error"]) == 10_000
