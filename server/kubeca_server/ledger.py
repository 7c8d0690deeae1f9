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
    anchor_pinned: bool = False


@dataclass(frozen=True)
class InventoryEntry:
    """What the inventory claims about one certificate, to hold against the chain."""

    serial: str
    audit_seq: int
    fingerprint_sha256: str
    revoked: bool
    pem_fingerprint_sha256: str = ""  # of the stored PEM itself, when known


def _parsed(row: ChainRow | None) -> dict[str, Any]:
    try:
        record = json.loads(row.record) if row is not None else {}
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _checkpoint_problems(
    checkpoints: list[Checkpoint], by_seq: dict[int, ChainRow], public_key: Any
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
    records = [_parsed(row) for row in by_seq.values()]
    revoked_in_chain = {r.get("serial") for r in records if r.get("event") == "certificate.revoked"}
    issued_in_chain = {r.get("serial") for r in records if r.get("event") == "certificate.issued"}
    problems = [
        f"certificate {serial} was issued (per the chain) but is missing from the inventory"
        for serial in sorted(issued_in_chain - {e.serial for e in inventory}, key=str)
    ]
    for entry in inventory:
        record = _parsed(by_seq.get(entry.audit_seq))
        if record.get("event") != "certificate.issued" or record.get("serial") != entry.serial:
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


def verify(
    rows: list[ChainRow],
    checkpoints: list[Checkpoint],
    inventory: list[InventoryEntry],
    service_ca_public_key: Any,
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
