"""Operators' management of bootstrap tokens: create, list, revoke, each audited.

A token can never carry more than its creator's grant: its profiles, node name and
addresses must all be ones the creator could have asked for itself.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from kubeca_client.errors import NotFound, PermissionDenied, Unauthenticated
from kubeca_client.names import SubjectAltNames

from kubeca_server import grants
from kubeca_server.audit import AuditLog
from kubeca_server.authority import OPERATOR, Caller
from kubeca_server.config import Grant
from kubeca_server.profiles import PROFILES, Inputs
from kubeca_server.store import Store, TokenRecord
from kubeca_server.tokens import TokenRequest, make_record


class TokenAdmin:
    def __init__(
        self,
        store: Store,
        audit: AuditLog,
        grants_by_identity: Mapping[str, Grant],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._audit = audit
        self._grants = dict(grants_by_identity)
        self._clock = clock

    def _operator_grant(self, caller: Caller) -> Grant:
        if caller.kind != OPERATOR:
            raise Unauthenticated(
                "managing bootstrap tokens needs an operator's client certificate"
            )
        grant = self._grants.get(caller.identity)
        if grant is None or not grant.bootstrap_tokens:
            raise PermissionDenied(
                f"identity {caller.identity!r} may not manage bootstrap tokens "
                "(its grant needs bootstrap_tokens = true)"
            )
        return grant

    def _audited(
        self, event: str, caller: Caller, action: Callable[[], object], **fields: Any
    ) -> None:
        """Run ``action``; audit a refusal, whatever raised it, and let it through."""
        try:
            action()
        except Exception as exc:
            self._audit.refused(
                f"{event}.refused", exc, caller=caller.identity, peer=caller.peer, **fields
            )
            raise

    def create(self, caller: Caller, request: TokenRequest) -> tuple[str, TokenRecord]:
        result: list[tuple[str, TokenRecord]] = []

        def run() -> None:
            grant = self._operator_grant(caller)
            token, record = make_record(request, caller.identity, self._clock(), grant.max_lifetime)
            # The token may carry nothing its creator could not ask for itself: its
            # profiles, and its node name and addresses as a client certificate would.
            for name in record.profiles:
                profile = PROFILES[name]
                if not grants.allows_profile(grant, profile):
                    raise PermissionDenied(
                        f"grant {grant.identity!r} does not allow profile {name}, so its "
                        "tokens may not either"
                    )
            ips = tuple(ipaddress.ip_address(a) for a in record.addresses)
            # The addresses are the creator's choice: checked as extra SANs, so no
            # fixed name (127.0.0.1, the service address) slips through exempt.
            grants.check_request(
                grant,
                PROFILES["kubelet-client"],
                Inputs(node_name=record.node_name, extra_sans=SubjectAltNames(ips=ips)),
                SubjectAltNames(ips=ips),
                timedelta(0),
            )
            result.append((token, record))

        fields: dict[str, Any] = {
            "profiles": list(request.profiles)[:16],
            "node_name": request.node_name[:253],
            "addresses": list(request.addresses)[:16],
        }
        self._audited("token.create", caller, run, **fields)
        token, record = result[0]
        # The token exists only with its record: both in one transaction.
        self._audit.record(
            "token.created",
            "info",
            outcome="created",
            token=record,
            token_id=record.token_id,
            expires=record.expires_at.isoformat(),
            caller=caller.identity,
            peer=caller.peer,
            **fields,
        )
        return token, record

    def list(self, caller: Caller) -> list[TokenRecord]:
        result: list[list[TokenRecord]] = []

        def run() -> None:
            grant = self._operator_grant(caller)
            # Tokens its grant could have made, not every operator's.
            result.append(
                [
                    t
                    for t in self._store.list_tokens(self._clock())
                    if all(grants.allows_profile(grant, PROFILES[p]) for p in t.profiles)
                ]
            )

        self._audited("token.list", caller, run)
        return result[0]

    def revoke(self, caller: Caller, token_id: str) -> None:
        def run() -> None:
            self._operator_grant(caller)
            if not self._store.revoke_token(token_id, self._clock()):
                raise NotFound(f"no unrevoked bootstrap token with id {token_id[:16]!r}")

        self._audited("token.revoke", caller, run, token_id=token_id[:16])
        self._audit.record(
            "token.revoked",
            "info",
            outcome="revoked",
            token_id=token_id,
            caller=caller.identity,
            peer=caller.peer,
        )
