"""Authentication into a Permit: what one caller may obtain, whoever they are.

An operator (a client certificate from the service CA) is permitted by its grant in
the server config; a node with a bootstrap token by the token's record. Both are one
``Permit`` to the pipeline: which profiles it allows, the longest lifetime it may ask
for, whether a request is within it, and what issuing under it uses up (a token's
profile, once) and gives back if the issuance fails.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from kubeca_client.errors import PermissionDenied, Unauthenticated
from kubeca_client.names import SubjectAltNames

from kubeca_server.config import Grant
from kubeca_server.issuance import grants, tokens
from kubeca_server.issuance.model import OPERATOR, TOKEN, Caller
from kubeca_server.profiles import Inputs, Profile
from kubeca_server.store import Store, TokenRecord


class Permit(Protocol):
    @property
    def identity(self) -> str: ...

    @property
    def idempotent(self) -> bool:
        """Whether the same request again gets the same certificate (operators: yes;
        a token obtains each profile once, so there is no "again")."""

    @property
    def ceiling(self) -> timedelta:
        """The longest lifetime this caller may have; it lowers the default too."""

    def allows(self, profile: Profile) -> bool: ...

    def check(
        self, profile: Profile, inputs: Inputs, sans: SubjectAltNames, lifetime: timedelta
    ) -> None:
        """Raise PermissionDenied, naming the rule, unless the request is within it."""

    def use(self, store: Store, profile: Profile, now: datetime) -> None:
        """Take what issuing under this permit uses up; raise if it is gone."""

    def give_back(self, store: Store, profile: Profile) -> None:
        """Undo ``use`` for an issuance that did not complete."""

    def fields(self) -> Mapping[str, Any]:
        """What the audit record says of the permit."""


@dataclass(frozen=True)
class GrantPermit:
    """An operator identity, permitted by its ``[grants.<identity>]``."""

    grant: Grant

    @property
    def identity(self) -> str:
        return self.grant.identity

    @property
    def idempotent(self) -> bool:
        return True

    @property
    def ceiling(self) -> timedelta:
        return self.grant.max_lifetime

    def allows(self, profile: Profile) -> bool:
        return grants.allows_profile(self.grant, profile)

    def check(
        self, profile: Profile, inputs: Inputs, sans: SubjectAltNames, lifetime: timedelta
    ) -> None:
        grants.check_request(self.grant, profile, inputs, sans, lifetime)

    def use(self, store: Store, profile: Profile, now: datetime) -> None:
        """A grant is not used up."""

    def give_back(self, store: Store, profile: Profile) -> None:
        """Nothing was taken."""

    def fields(self) -> Mapping[str, Any]:
        return {}


@dataclass(frozen=True)
class TokenPermit:
    """A node with a one-time bootstrap token, permitted by the token's record."""

    record: TokenRecord

    @property
    def identity(self) -> str:
        return f"token:{self.record.token_id}"

    @property
    def idempotent(self) -> bool:
        return False

    @property
    def ceiling(self) -> timedelta:
        return self.record.max_lifetime

    def allows(self, profile: Profile) -> bool:
        return profile.name in self.record.profiles

    def check(
        self, profile: Profile, inputs: Inputs, sans: SubjectAltNames, lifetime: timedelta
    ) -> None:
        tokens.check_request(self.record, profile, inputs, sans, lifetime)

    def use(self, store: Store, profile: Profile, now: datetime) -> None:
        # Of two concurrent uses for one profile, exactly one wins.
        with store.unit() as unit:
            used = unit.tokens.consume(self.record.token_id, profile.name, now)
        if not used:
            raise Unauthenticated(tokens.INVALID)

    def give_back(self, store: Store, profile: Profile) -> None:
        with store.unit() as unit:
            unit.tokens.release(self.record.token_id, profile.name)

    def fields(self) -> Mapping[str, Any]:
        return {"token_id": self.record.token_id}


class Gatekeeper:
    """Turns a caller into its Permit, or refuses."""

    def __init__(
        self, grants_by_identity: Mapping[str, Grant], store: Store, clock: Callable[[], datetime]
    ) -> None:
        self._grants = dict(grants_by_identity)
        self._store = store
        self._clock = clock

    def authenticate(self, caller: Caller) -> Permit:
        if caller.kind == OPERATOR:
            return GrantPermit(self.grant(caller))
        if caller.kind == TOKEN:
            return TokenPermit(tokens.authenticate(self._store, caller.token, self._clock()))
        raise Unauthenticated(
            "this call needs a client certificate (operators) or a bootstrap token (nodes)"
        )

    def grant(self, caller: Caller) -> Grant:
        """The grant of an operator; what operator-only verbs require."""
        if caller.kind != OPERATOR:
            raise Unauthenticated("this call needs an operator's client certificate")
        grant = self._grants.get(caller.identity)
        if grant is None:
            raise PermissionDenied(f"identity {caller.identity[:64]!r} has no grant")
        return grant
