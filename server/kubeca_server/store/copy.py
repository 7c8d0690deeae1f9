"""Moving everything one store remembers into another (SQLite into PostgreSQL, when one
server becomes several replicas), with the audit chain intact.

Only the store roles are used, so any store copies into any other. The whole copy is
one unit of work of the destination: it lands complete or not at all. Chain records are
re-appended from their own fields; since a record's hash covers only its canonical JSON
and the previous hash, each copied row must come out with the very hash it had, and the
copy is refused (and rolled back) at the first one that does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from kubeca_client.authorities import ALL_CAS
from kubeca_client.errors import FailedPrecondition

from kubeca_server.ledger.chain import ChainRow, first_broken_link
from kubeca_server.store.records import (
    CertificateRow,
    InventoryCursor,
    InventoryQuery,
    TokenCursor,
    TokenRecord,
)
from kubeca_server.store.roles import Store, UnitOfWork

PAGE = 5000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Copied:
    records: int
    certificates: int
    tokens: int
    checkpoints: int
    generations: int
    head_hash: str


def copy_store(source: Store, destination: Store) -> Copied:
    """Copy ``source`` into the empty ``destination``; refuse a broken source chain, a
    destination that holds anything, and any record whose hash would change."""
    with source.unit(read_only=True) as old:
        rows: list[ChainRow] = []
        while batch := old.audit.rows(rows[-1].seq if rows else 0, PAGE):
            rows.extend(batch)
        broken = first_broken_link(rows)
        if broken is not None:
            raise FailedPrecondition(
                f"the source chain is broken at record {broken[0]} ({broken[1]}); "
                "'audit verify' it first"
            )
        certificates: list[CertificateRow] = []
        cursor = None
        while page := old.inventory.page(InventoryQuery(), cursor, PAGE):
            certificates.extend(page)
            cursor = InventoryCursor(page[-1].not_after, page[-1].serial)
        # Every token ever made: pages hold only tokens unexpired at the time asked, so
        # ask as of the epoch.
        tokens: list[TokenRecord] = []
        after: TokenCursor | None = None
        while batch_of_tokens := old.tokens.page(_EPOCH, after, PAGE):
            tokens.extend(batch_of_tokens)
            after = TokenCursor(batch_of_tokens[-1].expires_at, batch_of_tokens[-1].token_id)
        checkpoints = old.checkpoints.all()
        generations = old.generations.all()
        crl_numbers = {name: old.crl_numbers.current(name) for name in ALL_CAS}

    with destination.unit() as new:
        _check_empty(new)
        _copy_chain(new, rows)
        for generation in generations:
            new.generations.add(generation)
        _copy_inventory(new, certificates)
        _copy_tokens(new, tokens)
        for checkpoint in checkpoints:
            new.checkpoints.add(checkpoint)
        for authority, number in crl_numbers.items():
            # CRL numbers must never go back: bring the counter to where it was.
            while new.crl_numbers.current(authority) < number:
                new.crl_numbers.next(authority)
    return Copied(
        records=len(rows),
        certificates=len(certificates),
        tokens=len(tokens),
        checkpoints=len(checkpoints),
        generations=len(generations),
        head_hash=rows[-1].hash if rows else "",
    )


def _check_empty(new: UnitOfWork) -> None:
    if new.audit.head() is not None or new.generations.all():
        raise FailedPrecondition(
            "the destination store is not empty: copy only into a store just made by 'migrate'"
        )


def _copy_chain(new: UnitOfWork, rows: list[ChainRow]) -> None:
    for row in rows:
        copied = new.audit.append({k: v for k, v in row.fields().items() if k != "seq"})
        if copied != row:
            raise FailedPrecondition(
                f"record {row.seq} would not keep its hash in the destination; nothing was copied"
            )


def _copy_inventory(new: UnitOfWork, certificates: list[CertificateRow]) -> None:
    for certificate in certificates:
        new.inventory.add(certificate)
        if certificate.revoked_at is not None:
            new.inventory.revoke(
                certificate.serial, certificate.revoked_at, certificate.revocation_reason or ""
            )


def _copy_tokens(new: UnitOfWork, tokens: list[TokenRecord]) -> None:
    for token in tokens:
        new.tokens.add(token)
        for profile in token.used_profiles:
            # A use is taken as of the token's creation, while it was valid.
            new.tokens.consume(token.token_id, profile, token.created_at)
        if token.revoked:
            # The store keeps no revocation time in the record: the creation time
            # stands in (the chain holds the token.revoked record and its time).
            new.tokens.revoke(token.token_id, token.created_at)
