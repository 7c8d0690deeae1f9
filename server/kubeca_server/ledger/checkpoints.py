"""Signed checkpoints: the service CA's HSM key signs the chain's head now and then, so
someone who can write the store still cannot rewrite history unnoticed."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from kubeca_server.ledger.audit import Entry, Ledger
from kubeca_server.ledger.chain import Checkpoint
from kubeca_server.store.changes import AddCheckpoint

CHECKPOINT_EVENT = "audit.checkpoint"


def checkpoint(
    ledger: Ledger,
    sign: Callable[[bytes], bytes],
    now: datetime,
    min_age_seconds: float = 0,
) -> Checkpoint | None:
    """Sign the chain's head, unless it is signed already or the last checkpoint is
    younger than ``min_age_seconds``. The checkpoint and its own record commit together."""
    with ledger.store.unit(read_only=True) as unit:
        head = unit.audit.head()
        previous = unit.checkpoints.all()
    if head is None:
        return None
    # The checkpoint's own record follows it; nothing else new means nothing to sign.
    only_its_record = (
        bool(previous)
        and head.seq == previous[-1].seq + 1
        and head.fields().get("event") == CHECKPOINT_EVENT
    )
    if previous and (
        previous[-1].seq == head.seq
        or only_its_record
        or (now - previous[-1].signed_at).total_seconds() < min_age_seconds
    ):
        return None
    unsigned = Checkpoint(head.seq, head.hash, now, b"")
    signed = Checkpoint(head.seq, head.hash, now, sign(unsigned.message()))
    ledger.commit(
        Entry(
            CHECKPOINT_EVENT,
            {"checkpoint_seq": signed.seq, "head_hash": signed.head_hash},
            change=AddCheckpoint(signed),
        )
    )
    return signed
