"""What links audit records, and what a checkpoint signs.

Each record carries its sequence number; its hash covers the previous record's hash
and its own canonical JSON, so editing, deleting, reordering or inserting a record
breaks the chain at that record. Someone able to write the state could still
recompute every hash after a change; signed checkpoints stop that: the service CA's
key, which never leaves the HSM, signs (sequence, head hash) now and then.

Pure data and functions: the store computes links with these inside its transaction.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

GENESIS = "0" * 64


def canonical(record: Mapping[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def link_hash(prev_hash: str, record_json: str) -> str:
    return hashlib.sha256(f"{prev_hash}\n{record_json}".encode()).hexdigest()


@dataclass(frozen=True)
class ChainRow:
    seq: int
    record: str  # canonical JSON, with "seq" inside it
    prev_hash: str
    hash: str

    def fields(self) -> dict[str, Any]:
        """The record as a dict; {} when it is not a JSON object (a tampered row)."""
        try:
            parsed = json.loads(self.record)
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {}


def chain_row(seq: int, prev_hash: str, record: Mapping[str, Any]) -> ChainRow:
    """The row that appends ``record`` after a row whose hash is ``prev_hash``."""
    body = canonical({**record, "seq": seq})
    return ChainRow(seq, body, prev_hash, link_hash(prev_hash, body))


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    head_hash: str
    signed_at: datetime
    signature: bytes

    def message(self) -> bytes:
        """What the service CA signs."""
        lines = (
            "kubeca-audit-checkpoint",
            str(self.seq),
            self.head_hash,
            self.signed_at.isoformat(),
        )
        return "\n".join(lines).encode()


def first_broken_link(rows: Iterable[ChainRow]) -> tuple[int, str] | None:
    """(sequence number, what is wrong) at the first record that does not chain."""
    expected_seq, prev_hash = 1, GENESIS
    for row in rows:
        if row.seq != expected_seq:
            return expected_seq, f"record {expected_seq} is missing (next present: {row.seq})"
        inner = row.fields().get("seq")
        if inner != row.seq:
            return row.seq, f"record {row.seq} holds sequence number {inner} (moved?)"
        if row.prev_hash != prev_hash:
            return row.seq, f"record {row.seq} does not follow record {row.seq - 1}"
        if link_hash(row.prev_hash, row.record) != row.hash:
            return row.seq, f"record {row.seq} was altered (its hash does not match)"
        expected_seq, prev_hash = row.seq + 1, row.hash
    return None
