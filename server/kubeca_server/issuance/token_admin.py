"""Operators' management of bootstrap tokens: create, list, revoke, each audited.

A token can never carry more than its creator's grant: its profiles, node name and
addresses must all be ones the creator could have asked for itself. A token exists
only with its creation record, and is revoked only with its revocation record: each
is one transaction.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from kubeca_client.errors import PermissionDenied
from kubeca_client.names import SubjectAltNames

from kubeca_server.config import Grant
from kubeca_server.issuance import grants, paging
from kubeca_server.issuance.model import Caller
from kubeca_server.issuance.permits import Gatekeeper
from kubeca_server.issuance.tokens import TokenRequest, make_record
from kubeca_server.ledger.audit import Entry, Ledger
from kubeca_server.profiles import PROFILES, Inputs
from kubeca_server.store import TokenCursor, TokenRecord
from kubeca_server.store.changes import AddToken, RevokeToken

DEFAULT_PAGE = 100
MAX_PAGE = 1000


@dataclass(frozen=True)
class TokenPage:
    tokens: list[TokenRecord]
    next_token: str  # "" after the last page


class TokenAdmin:
    def __init__(
        self, gatekeeper: Gatekeeper, ledger: Ledger, clock: Callable[[], datetime]
    ) -> None:
        self._gatekeeper = gatekeeper
        self._ledger = ledger
        self._clock = clock

    def _grant(self, caller: Caller) -> Grant:
        grant = self._gatekeeper.grant(caller)
        if not grant.bootstrap_tokens:
            raise PermissionDenied(
                f"identity {caller.identity!r} may not manage bootstrap tokens "
                "(its grant needs bootstrap_tokens = true)"
            )
        return grant

    def create(self, caller: Caller, request: TokenRequest) -> tuple[str, TokenRecord]:
        grant = self._grant(caller)
        token, record = make_record(request, caller.identity, self._clock(), grant.max_lifetime)
        # The token may carry nothing its creator could not ask for itself: its
        # profiles, and its node name and addresses as a client certificate would.
        for name in record.profiles:
            if not grants.allows_profile(grant, PROFILES[name]):
                raise PermissionDenied(
                    f"grant {grant.identity!r} does not allow profile {name}, so its "
                    "tokens may not either"
                )
        ips = tuple(ipaddress.ip_address(a) for a in record.addresses)
        # The node name and addresses are the creator's choice: checked as a node name
        # and extra SANs would be, so no fixed name (127.0.0.1, the service address)
        # slips through exempt.
        grants.check_node(grant, record.node_name)
        supplied = SubjectAltNames(ips=ips)
        grants.check_names(grant, supplied, Inputs(node_name=record.node_name, extra_sans=supplied))
        self._ledger.commit(
            Entry(
                "token.created",
                {
                    **caller.fields(),
                    **request.fields(),
                    "outcome": "created",
                    "token_id": record.token_id,
                    "expires": record.expires_at.isoformat(),
                },
                change=AddToken(record),
            )
        )
        return token, record

    def page(self, caller: Caller, token: str = "", size: int = 0) -> TokenPage:
        """One page of live tokens (the latest to expire first) that the caller's grant
        could have made, not every operator's, and the token for the next page."""
        grant = self._grant(caller)
        size = paging.page_size(size, DEFAULT_PAGE, MAX_PAGE)
        after = paging.decode(token)
        with self._ledger.store.unit(read_only=True) as unit:
            live = unit.tokens.page(self._clock(), TokenCursor(*after) if after else None, size + 1)
        more = len(live) > size
        live = live[:size]
        next_token = paging.encode(live[-1].expires_at, live[-1].token_id) if more else ""
        mine = [
            t
            for t in live
            if all(p in PROFILES and grants.allows_profile(grant, PROFILES[p]) for p in t.profiles)
        ]
        return TokenPage(mine, next_token)

    def list(self, caller: Caller) -> list[TokenRecord]:
        """Every page: for callers in this process (tests, verbs), not the API."""
        found: list[TokenRecord] = []
        token = ""
        while True:
            page = self.page(caller, token, MAX_PAGE)
            found.extend(page.tokens)
            if not (token := page.next_token):
                return found

    def revoke(self, caller: Caller, token_id: str) -> None:
        self._grant(caller)
        self._ledger.commit(
            Entry(
                "token.revoked",
                {**caller.fields(), "outcome": "revoked", "token_id": token_id[:16]},
                change=RevokeToken(token_id, self._clock()),
            )
        )
