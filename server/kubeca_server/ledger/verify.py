"""Checking the ledger: the chain's links, every signed checkpoint against it, every
inventory row against the record that issued it, and the mirror against the chain."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature

from kubeca_server.keys import CAPublicKey, verify_signature
from kubeca_server.ledger.chain import ChainRow, Checkpoint, first_broken_link
from kubeca_server.ledger.mirror import mirror_line

MAX_MIRROR_PROBLEMS = 5
# The records that put a certificate into the inventory: leaves, and operator credentials.
ISSUING_EVENTS = frozenset({"certificate.issued", "credentials.issued"})


def checkpoint_is_genuine(checkpoint: Checkpoint, public_key: CAPublicKey) -> bool:
    try:
        verify_signature(public_key, checkpoint.signature, checkpoint.message())
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


@dataclass
class Verification:
    records: int = 0
    checkpoints: int = 0
    certificates: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    anchor_pinned: bool = False


@dataclass(frozen=True)
class InventoryEntry:
    """What the inventory claims about one certificate, to hold against the chain."""

    serial: str
    audit_seq: int
    fingerprint_sha256: str
    revoked: bool
    pem_fingerprint_sha256: str = ""  # of the stored PEM itself, when known


def _checkpoint_problems(
    checkpoints: list[Checkpoint], by_seq: dict[int, ChainRow], public_key: CAPublicKey
) -> list[str]:
    problems = []
    for checkpoint in checkpoints:
        if not checkpoint_is_genuine(checkpoint, public_key):
            problems.append(f"checkpoint at record {checkpoint.seq} has no valid signature")
        elif checkpoint.seq not in by_seq:
            problems.append(
                f"checkpoint at record {checkpoint.seq} names a record that is gone "
                "(records were deleted)"
            )
        elif by_seq[checkpoint.seq].hash != checkpoint.head_hash:
            problems.append(
                f"checkpoint at record {checkpoint.seq} does not match the chain "
                "(history before it was rewritten)"
            )
    return problems


def _inventory_problems(inventory: list[InventoryEntry], by_seq: dict[int, ChainRow]) -> list[str]:
    records = [row.fields() for row in by_seq.values()]
    revoked_in_chain = {r.get("serial") for r in records if r.get("event") == "certificate.revoked"}
    # Credentials issued before they entered the inventory have no fingerprint field.
    issued_in_chain = {
        r.get("serial")
        for r in records
        if r.get("event") == "certificate.issued"
        or (r.get("event") == "credentials.issued" and "fingerprint_sha256" in r)
    }
    problems = [
        f"certificate {serial} was issued (per the chain) but is missing from the inventory"
        for serial in sorted(issued_in_chain - {e.serial for e in inventory}, key=str)
    ]
    for entry in inventory:
        row = by_seq.get(entry.audit_seq)
        record: dict[str, Any] = row.fields() if row is not None else {}
        if record.get("event") not in ISSUING_EVENTS or record.get("serial") != entry.serial:
            problems.append(
                f"certificate {entry.serial} has no matching audit record "
                f"(record {entry.audit_seq})"
            )
        elif record.get("fingerprint_sha256") != entry.fingerprint_sha256 or (
            entry.pem_fingerprint_sha256
            and entry.pem_fingerprint_sha256 != entry.fingerprint_sha256
        ):
            problems.append(
                f"certificate {entry.serial} in the inventory is not the one record "
                f"{entry.audit_seq} issued (fingerprints differ)"
            )
        if entry.revoked != (entry.serial in revoked_in_chain):
            state = "revoked" if entry.revoked else "not revoked"
            problems.append(
                f"certificate {entry.serial} is {state} in the inventory, but the chain "
                "says otherwise"
            )
    return problems


def check_mirror(path: Path, rows: Iterable[ChainRow], result: Verification) -> None:
    """Where the JSON-lines mirror differs from the chain (a problem: someone edited the
    shipped log) or lags behind it (a note: a worker died between committing a record
    and mirroring it; the next start or record appends what is missing)."""
    expected = {row.seq: mirror_line(row) for row in rows}
    problems: list[str] = []
    try:
        text = path.read_bytes().decode(errors="replace")
    except FileNotFoundError:
        text = ""
    lines = text.splitlines()
    if text and not text.endswith("\n"):
        # A crash mid-write leaves half a line; the next sync cuts it off and appends
        # the whole record, so it is part of the lag, not an edit.
        lines.pop()
        result.notes.append(
            f"the mirror {path} ends in half a line (a crash while writing it); the next "
            "start cuts it off"
        )
    previous = 0
    for number, line in enumerate(lines, 1):
        seq = _seq_of(line)
        if seq is None or seq not in expected:
            problems.append(f"mirror line {number} is no record of the chain")
            continue
        if line != expected[seq]:
            problems.append(f"mirror line {number} differs from chain record {seq}")
        if seq != previous + 1:
            problems.append(
                f"mirror line {number} holds record {seq} after record {previous} "
                "(records are missing or out of order)"
            )
        previous = seq
    result.problems += problems[:MAX_MIRROR_PROBLEMS]
    if len(problems) > MAX_MIRROR_PROBLEMS:
        result.problems.append(f"... and {len(problems) - MAX_MIRROR_PROBLEMS} more in the mirror")
    behind = len(expected) - previous
    if behind > 0 and not problems:
        result.notes.append(
            f"the mirror {path} lags {behind} records behind the chain (from record "
            f"{previous + 1}); the next start, or the next record, appends them"
        )


def _seq_of(line: str) -> int | None:
    try:
        seq = json.loads(line).get("seq")
    except (ValueError, AttributeError):
        return None
    return seq if isinstance(seq, int) else None


def verify(
    rows: list[ChainRow],
    checkpoints: list[Checkpoint],
    inventory: list[InventoryEntry],
    service_ca_public_key: CAPublicKey,
) -> Verification:
    """Walk the chain, check every checkpoint against it, and every inventory row
    against the chain: its issued record, its certificate, its revocation."""
    result = Verification(len(rows), len(checkpoints), len(inventory))
    broken = first_broken_link(rows)
    if broken is not None:
        result.problems.append(f"chain broken at record {broken[0]}: {broken[1]}")
    by_seq = {row.seq: row for row in rows}
    result.problems += _checkpoint_problems(checkpoints, by_seq, service_ca_public_key)
    result.problems += _inventory_problems(inventory, by_seq)
    return result
