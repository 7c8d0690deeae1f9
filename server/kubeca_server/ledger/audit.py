"""Writing the audit chain: one record per decision, durable before the answer leaves.

``Ledger.commit`` appends an ``Entry`` to the chain and applies the state change it
records (a certificate into the inventory, a revocation, a token) in the same unit of
work, so both are durable together or neither is; only then is the mirror brought up
to date. If the store cannot write, ``commit`` raises and the caller returns an error,
never a certificate. ``Ledger.refusal`` is the one way a refusal becomes a record.

Group commit: entries that arrive while one is being written wait and are then written
together, in one unit of work and so one fsync, each in a savepoint of its own (an
entry whose change fails is undone alone and its caller gets the error). Every caller
still returns only after its own record is durable; under load, many share the cost.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from kubeca_client.errors import KubecaError
from kubeca_client.text import clip

from kubeca_server.ledger.chain import ChainRow
from kubeca_server.ledger.mirror import Mirror
from kubeca_server.store.changes import Change
from kubeca_server.store.roles import Store

log = structlog.get_logger("kubeca.audit")
# A refusal's reason is the message the caller saw; its echoes are bounded where they
# are made, and this bounds the record whatever a message grows to.
MAX_REASON = 1024

SEVERITIES = ("info", "warning", "error", "critical")
# Entries written in one unit of work at most: bounds the transaction and the wait.
MAX_BATCH = 256


@dataclass(frozen=True)
class Entry:
    """One audit record, and the state change it commits with (if any)."""

    event: str
    fields: Mapping[str, Any] = field(default_factory=dict)
    severity: str = "info"
    change: Change | None = None


@dataclass(eq=False)
class _Pending:
    record: dict[str, Any]
    change: Change | None
    row: ChainRow | None = None
    error: BaseException | None = None
    done: bool = False


class Ledger:
    """The writer of the audit chain: each ``commit`` is one record, with the state change
    it records, in one unit of work; durable on return, then mirrored."""

    def __init__(
        self,
        store: Store,
        mirror: Mirror,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._mirror = mirror
        self._clock = clock
        self._turn = threading.Condition()
        self._queue: list[_Pending] = []
        self._writing = False

    @property
    def store(self) -> Store:
        return self._store

    def commit(self, entry: Entry) -> ChainRow:
        """Append ``entry`` (with its change, in one transaction); durable on return."""
        if entry.severity not in SEVERITIES:
            raise ValueError(f"unknown severity {entry.severity!r}")
        record = {
            **entry.fields,
            "event": entry.event,
            "level": entry.severity,
            "time": self._clock().isoformat(),
            "worker": os.getpid(),  # which process decided; workers share the chain
        }
        pending = _Pending(record, entry.change)
        with self._turn:
            self._queue.append(pending)
            while True:
                if pending.done:
                    break
                if not self._writing:
                    # This caller writes the next batch (its own entry, and whatever
                    # queued behind the previous one), then hands the turn on.
                    self._writing = True
                    batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                    self._turn.release()
                    try:
                        self._write(batch)
                    finally:
                        self._turn.acquire()
                        self._writing = False
                        self._turn.notify_all()
                    continue
                self._turn.wait()
        if pending.error is not None:
            raise pending.error
        assert pending.row is not None
        return pending.row

    def _write(self, batch: Sequence[_Pending]) -> None:
        try:
            with self._store.unit() as unit:
                for pending in batch:
                    try:
                        with unit.savepoint():
                            row = unit.audit.append(pending.record)
                            if pending.change is not None:
                                pending.change.apply(unit, row.seq)
                        pending.row = row
                    except Exception as exc:
                        pending.error = exc
        except BaseException as exc:
            # Nothing of the batch is durable: every caller in it hears why.
            for pending in batch:
                pending.row, pending.error = None, pending.error or exc
        committed = [p.row for p in batch if p.row is not None]
        if committed:
            self.sync_mirror(committed)
        for pending in batch:
            pending.done = True

    def refusal(self, event: str, error: BaseException, fields: Mapping[str, Any]) -> ChainRow:
        """Record a refusal: the taxonomy's status and message with what the decision
        had learned (``error.context``), or, for anything unexpected, "internal error"
        (the details belong in the server log, not the ledger)."""
        if isinstance(error, KubecaError):
            return self.commit(
                Entry(
                    event,
                    {
                        **error.context,
                        **fields,
                        "outcome": "refused",
                        "reason": clip(error.message, MAX_REASON),
                        "status": error.status,
                    },
                    "warning",
                )
            )
        return self.commit(
            Entry(
                event,
                {**fields, "outcome": "error", "reason": "internal error", "status": "INTERNAL"},
                "error",
            )
        )

    def sync_mirror(self, committed: Sequence[ChainRow] = ()) -> None:
        """Bring the JSON-lines mirror up to the chain's head (``committed``: the rows
        just written, in order); a failure here loses nothing (the chain holds the
        records), so it is logged, not raised."""
        try:
            self._mirror.sync(self._store, committed)
        except (OSError, KubecaError) as exc:
            log.error("audit.mirror_failed", error=str(exc))

    def close(self) -> None:
        self._mirror.close()
