"""The audit chain: what links records, and what proves nobody rewrote them.

Each record carries its sequence number; its hash covers the previous record's hash
and its own canonical JSON, so editing, deleting, reordering or inserting a record
breaks the chain at that record. Someone able to write the state directory could
still recompute every hash after a change; signed checkpoints stop that: the service
CA's key, which never leaves the HSM, signs (sequence, head hash) now and then, and
verification checks each checkpoint against the chain.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

GENESIS = "0" * 64


def canonical(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def link_hash(prev_hash: str, record_json: str) -> str:
    return hashlib.sha256(f"{prev_hash}\n{record_json}".encode()).hexdigest()


@dataclass(frozen=True)
class ChainRow:
    seq: int
    record: str  # canonical JSON, with "seq" inside it
    prev_hash: str
    hash: str


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
        try:
            inner = json.loads(row.record).get("seq")
        except (ValueError, AttributeError):
            inner = None
        if inner != row.seq:
            return row.seq, f"record {row.seq} holds sequence number {inner} (moved?)"
        if row.prev_hash != prev_hash:
            return row.seq, f"record {row.seq} does not follow record {row.seq - 1}"
        if link_hash(row.prev_hash, row.record) != row.hash:
            return row.seq, f"record {row.seq} was altered (its hash does not match)"
        expected_seq, prev_hash = row.seq + 1, row.hash
    return None


def _signature_scheme(key: Any) -> tuple[Any, ...]:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding

    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return (ec.ECDSA(hashes.SHA256()),)
    return (padding.PKCS1v15(), hashes.SHA256())


def sign_checkpoint(seq: int, head_hash: str, key: Any, now: datetime) -> Checkpoint:
    """A checkpoint of the chain up to ``seq``, signed by ``key`` (the service CA's)."""
    unsigned = Checkpoint(seq, head_hash, now, b"")
    signature = key.sign(unsigned.message(), *_signature_scheme(key))
    return Checkpoint(seq, head_hash, now, signature)


def checkpoint_is_genuine(checkpoint: Checkpoint, public_key: Any) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        scheme = _signature_scheme(public_key)
        public_key.verify(checkpoint.signature, checkpoint.message(), *scheme)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


@dataclass
class Verification:
    records: int = 0
    checkpoints: int = 0
    certificates: int = 0
    problems: list[str] = field(default_factory=list)


def verify(
    rows: list[ChainRow],
    checkpoints: list[Checkpoint],
    issued: list[tuple[str, int]],
    service_ca_public_key: Any,
) -> Verification:
    """Walk the chain, check every checkpoint against it, and every inventory row
    (serial, audit sequence number) against its audit record."""
    result = Verification(len(rows), len(checkpoints), len(issued))
    problems = result.problems
    broken = first_broken_link(rows)
    if broken is not None:
        problems.append(f"chain broken at record {broken[0]}: {broken[1]}")
    by_seq = {row.seq: row for row in rows}
    for checkpoint in checkpoints:
        if not checkpoint_is_genuine(checkpoint, service_ca_public_key):
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
    for serial, seq in issued:
        row = by_seq.get(seq)
        try:
            record = json.loads(row.record) if row is not None else {}
        except ValueError:
            record = {}
        if record.get("event") != "certificate.issued" or record.get("serial") != serial:
            problems.append(f"certificate {serial} has no matching audit record (record {seq})")
    return result
