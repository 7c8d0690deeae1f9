"""Service-account tokens: authorize -> check the claims -> sign -> record -> answer.

The same shape as certificate issuance, for ExternalJWTSigner. The signature leaves
only after its audit record (sub, aud, exp, jti, kid, and the hash of the whole token)
is durable; the ledger's group commit writes the records of concurrent signatures in
one transaction, so a burst of tokens shares one fsync instead of waiting for one each.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from kubeca_client.errors import PermissionDenied

from kubeca_server.ca.signing_key import KeyRing, KeySet, b64url
from kubeca_server.config import Grant
from kubeca_server.issuance.jwt_policy import ClaimsPolicy
from kubeca_server.issuance.model import LOCAL, OPERATOR, Caller
from kubeca_server.ledger.audit import Entry, Ledger

SIGNED_EVENT = "serviceaccount.token_signed"
REFUSED_EVENT = "serviceaccount.token_refused"


@dataclass(frozen=True)
class SignedToken:
    header: str  # base64url
    signature: str  # base64url
    kid: str


class TokenSigner:
    def __init__(
        self,
        ring: KeyRing,
        policy: ClaimsPolicy,
        ledger: Ledger,
        grants: Mapping[str, Grant],
        max_expiration: timedelta,
        refresh_hint_seconds: int,
    ) -> None:
        self._ring = ring
        self._policy = policy
        self._ledger = ledger
        self._grants = grants
        self.max_expiration = max_expiration
        self.refresh_hint_seconds = refresh_hint_seconds

    def authorize(self, caller: Caller) -> None:
        """The local socket's mode decides who reaches it; over mutual TLS only an
        operator whose grant says ``service_account_signing`` (a signer proxy)."""
        if caller.kind == LOCAL:
            return
        grant = self._grants.get(caller.identity) if caller.kind == OPERATOR else None
        if grant is None or not grant.service_account_signing:
            raise PermissionDenied(
                f"{caller.identity[:64]!r} may not sign service-account tokens (its grant "
                "needs service_account_signing = true)"
            )

    def keys(self) -> KeySet:
        return self._ring.keys()

    def sign(self, claims: str, caller: Caller) -> SignedToken:
        self.authorize(caller)
        checked = self._policy.check(claims)
        key = self._ring.keys().current
        header = b64url(
            json.dumps(
                {"alg": key.alg, "kid": key.kid, "typ": "JWT"}, separators=(",", ":")
            ).encode()
        )
        signing_input = f"{header}.{claims}".encode()
        signature = b64url(key.sign(signing_input))
        token_hash = hashlib.sha256(signing_input + b"." + signature.encode()).hexdigest()
        self._ledger.commit(
            Entry(
                SIGNED_EVENT,
                {
                    **checked.fields(),
                    **caller.fields(),
                    "outcome": "signed",
                    "kid": key.kid,
                    "generation": key.generation,
                    "token_sha256": token_hash,
                },
            )
        )
        return SignedToken(header, signature, key.kid)
