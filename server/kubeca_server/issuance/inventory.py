"""The operators' view of what was issued: listing it page by page, and revoking.

An operator sees and revokes only what its grant could have issued. A revocation is
one audit record with the inventory change in its transaction, then the CA's new CRL.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from kubeca_client.authorities import SERVICE_CA
from kubeca_client.errors import InvalidArgument, NotFound, PermissionDenied

from kubeca_server.ca.crl import CRLPublisher, PublishedCRL
from kubeca_server.config import Grant
from kubeca_server.issuance import grants, paging
from kubeca_server.issuance.model import Caller
from kubeca_server.issuance.permits import Gatekeeper
from kubeca_server.ledger.audit import Entry, Ledger
from kubeca_server.profiles import PROFILES
from kubeca_server.store import CertificateRow, InventoryCursor, InventoryQuery
from kubeca_server.store.changes import RevokeCertificate

DEFAULT_PAGE = 500
MAX_PAGE = 1000


@dataclass(frozen=True)
class Page:
    rows: list[CertificateRow]
    next_token: str  # "" after the last page


def visible(grant: Grant, row: CertificateRow) -> bool:
    """Whether an operator's grant covers a certificate (could it have issued it?).
    Operator credentials (the service CA's) are for grants that may revoke."""
    if row.authority == SERVICE_CA:
        return grant.revoke
    profile = PROFILES.get(row.profile)
    return profile is not None and grants.allows_profile(grant, profile)


class Inventory:
    def __init__(
        self,
        gatekeeper: Gatekeeper,
        ledger: Ledger,
        crls: CRLPublisher,
        clock: Callable[[], datetime],
    ) -> None:
        self._gatekeeper = gatekeeper
        self._ledger = ledger
        self._crls = crls
        self._clock = clock

    def query(
        self, authority: str, profile: str, expiring_within: timedelta | None, revoked_only: bool
    ) -> InventoryQuery:
        before = self._clock() + expiring_within if expiring_within else None
        return InventoryQuery(authority, profile, before, revoked_only)

    def page(self, caller: Caller, query: InventoryQuery, token: str, size: int) -> Page:
        """One page of what the caller's grant covers, and the token for the next."""
        grant = self._gatekeeper.grant(caller)
        size = paging.page_size(size, DEFAULT_PAGE, MAX_PAGE)
        after = paging.decode(token)
        cursor = InventoryCursor(*after) if after else None
        known = PROFILES.get(query.profile)
        if known is not None and query.authority and known.authority != query.authority:
            # Nothing can match; asking would scan the profile's every row for nothing.
            return Page([], "")
        with self._ledger.store.unit(read_only=True) as unit:
            rows = unit.inventory.page(query, cursor, size + 1)
        more = len(rows) > size
        rows = rows[:size]
        next_token = paging.encode(rows[-1].not_after, rows[-1].serial) if more else ""
        return Page([r for r in rows if visible(grant, r)], next_token)

    def revoke(
        self, caller: Caller, serial: str, reason: str
    ) -> tuple[CertificateRow, PublishedCRL]:
        """Mark a certificate revoked (audited in the same transaction), then publish
        its CA's new CRL."""
        grant = self._gatekeeper.grant(caller)
        if not grant.revoke:
            raise PermissionDenied(
                f"grant {grant.identity!r} may not revoke (it needs revoke = true)"
            )
        # As issue prints it, or as openssl prints it (upper case, zero-padded).
        normalized = serial.strip().lower().removeprefix("0x").replace(":", "").lstrip("0")
        with self._ledger.store.unit(read_only=True) as unit:
            row = unit.inventory.find(normalized)
        if row is None:
            raise NotFound(f"no certificate with serial {serial[:64]!r} was issued here")
        if not visible(grant, row):
            raise PermissionDenied(
                f"grant {grant.identity!r} does not allow profile {row.profile}, so it "
                "may not revoke its certificates either"
            )
        if row.revoked_at is not None:
            raise InvalidArgument(f"certificate {normalized} was revoked already")
        now = self._clock()
        self._ledger.commit(
            Entry(
                "certificate.revoked",
                {
                    **caller.fields(),
                    "outcome": "revoked",
                    "serial": normalized,
                    "reason": reason,
                    "authority": row.authority,
                    "profile": row.profile,
                    "subject": row.subject,
                },
                "warning",
                RevokeCertificate(normalized, now, reason),
            )
        )
        with self._ledger.store.unit(read_only=True) as unit:
            revoked = unit.inventory.find(normalized)
        assert revoked is not None
        return revoked, self._crls.publish(row.authority)
