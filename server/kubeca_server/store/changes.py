"""The state changes an audit record commits with: typed, so a record and what it
did are one value the ledger applies inside the record's own transaction.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from kubeca_client.errors import NotFound

from kubeca_server.ledger.chain import Checkpoint
from kubeca_server.store.records import CertificateRow, GenerationRow, GenerationState, TokenRecord
from kubeca_server.store.roles import UnitOfWork


class Change(Protocol):
    def apply(self, unit: UnitOfWork, seq: int) -> None:
        """Make the change in ``unit``; ``seq`` is the audit record that records it."""


@dataclass(frozen=True)
class AddCertificate:
    """An issued certificate enters the inventory, and its idempotency claim ends."""

    row: CertificateRow

    def apply(self, unit: UnitOfWork, seq: int) -> None:
        unit.claims.release(self.row.request_fingerprint)
        unit.inventory.add(dataclasses.replace(self.row, audit_seq=seq))


@dataclass(frozen=True)
class RevokeCertificate:
    serial: str
    when: datetime
    reason: str

    def apply(self, unit: UnitOfWork, seq: int) -> None:
        if not unit.inventory.revoke(self.serial, self.when, self.reason):
            raise NotFound(f"no unrevoked certificate with serial {self.serial[:40]}")


@dataclass(frozen=True)
class AddToken:
    token: TokenRecord

    def apply(self, unit: UnitOfWork, seq: int) -> None:
        unit.tokens.add(self.token)


@dataclass(frozen=True)
class RevokeToken:
    token_id: str
    when: datetime

    def apply(self, unit: UnitOfWork, seq: int) -> None:
        if not unit.tokens.revoke(self.token_id, self.when):
            raise NotFound(f"no unrevoked bootstrap token with id {self.token_id[:16]!r}")


@dataclass(frozen=True)
class AddCheckpoint:
    checkpoint: Checkpoint

    def apply(self, unit: UnitOfWork, seq: int) -> None:
        unit.checkpoints.add(self.checkpoint)


@dataclass(frozen=True)
class AddGeneration:
    row: GenerationRow

    def apply(self, unit: UnitOfWork, seq: int) -> None:
        unit.generations.add(self.row)


@dataclass(frozen=True)
class SetGenerationStates:
    """Several generations of one CA change state at once (a rotation step)."""

    authority: str
    states: tuple[tuple[int, GenerationState], ...]
    when: datetime

    def apply(self, unit: UnitOfWork, seq: int) -> None:
        for generation, state in self.states:
            unit.generations.set_state(self.authority, generation, state, self.when)
