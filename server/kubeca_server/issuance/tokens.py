"""One-time bootstrap tokens, in kubeadm's shape: ``[a-z0-9]{6}.[a-z0-9]{16}``.

The id (before the dot) is public and names the token in lists and audit records;
the secret is shown once, at creation, and only its hash is stored. A token obtains
each of its profiles once, for its node name and addresses only, until it expires.
A wrong, used, revoked or expired token gets one and the same answer, so a caller
learns nothing by guessing.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kubeca_client.errors import InvalidArgument, PermissionDenied, Unauthenticated
from kubeca_client.names import SubjectAltNames, parse_dns_name, parse_ip
from kubeca_client.text import clip

from kubeca_server.profiles import NODE_NAME, PROFILES, Inputs, Profile
from kubeca_server.store import Store, TokenRecord

TOKEN = re.compile(r"([a-z0-9]{6})\.([a-z0-9]{16})")
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
DEFAULT_TTL = timedelta(hours=1)
MAX_TTL = timedelta(hours=24)
INVALID = "invalid bootstrap token"


def secret_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    def pick(n: int) -> str:
        return "".join(secrets.choice(ALPHABET) for _ in range(n))

    return f"{pick(6)}.{pick(16)}"


@dataclass(frozen=True)
class TokenRequest:
    profiles: Sequence[str]
    node_name: str
    addresses: Sequence[str]
    ttl: timedelta | None

    def fields(self) -> dict[str, Any]:
        """The request as its audit record shows it: bounded, whatever was sent."""
        return {
            "profiles": [clip(p, 64) for p in list(self.profiles)[:16]],
            "node_name": clip(self.node_name, 253),
            "addresses": [clip(a, 64) for a in list(self.addresses)[:16]],
        }


def make_record(
    request: TokenRequest, created_by: str, now: datetime, max_lifetime: timedelta
) -> tuple[str, TokenRecord]:
    """Validate a creation request; return the token (shown once) and what is stored."""
    if not request.profiles:
        raise InvalidArgument("a bootstrap token needs at least one profile")
    for name in request.profiles:
        profile = PROFILES.get(name)
        if profile is None:
            raise InvalidArgument(f"no profile named {name[:64]!r}")
        if profile.grants_system_masters:
            raise InvalidArgument(f"profile {name} is never available to bootstrap tokens")
        if NODE_NAME not in profile.required:
            # A token is bound to one node; a profile that names no node could not use it.
            raise InvalidArgument(f"profile {name} names no node, so no token can carry it")
    node_name = parse_dns_name(request.node_name, "node_name")
    addresses = tuple(str(parse_ip(a, "addresses")) for a in request.addresses)
    ttl = request.ttl or DEFAULT_TTL
    if not timedelta(0) < ttl <= MAX_TTL:
        raise InvalidArgument(f"ttl must be positive and at most {int(MAX_TTL.total_seconds())}s")
    token = new_token()
    record = TokenRecord(
        token_id=token.split(".")[0],
        secret_hash=secret_hash(token),
        profiles=tuple(dict.fromkeys(request.profiles)),
        node_name=node_name,
        addresses=addresses,
        expires_at=now + ttl,
        created_by=created_by,
        created_at=now,
        max_lifetime=max_lifetime,
    )
    return token, record


def authenticate(store: Store, token: str, now: datetime) -> TokenRecord:
    """The token's record, if the token is genuine, unrevoked and unexpired."""
    match = TOKEN.fullmatch(token)
    if match is None:
        raise Unauthenticated(INVALID)
    with store.unit(read_only=True) as unit:
        record = unit.tokens.find(match.group(1))
    if (
        record is None
        or not hmac.compare_digest(record.secret_hash, secret_hash(token))
        or record.revoked
        or record.expires_at <= now
        or set(record.used_profiles) >= set(record.profiles)
    ):
        raise Unauthenticated(INVALID)
    return record


def check_request(
    record: TokenRecord,
    profile: Profile,
    inputs: Inputs,
    sans: SubjectAltNames,
    lifetime: timedelta,
) -> None:
    """A token obtains its own profiles for its own node and addresses, nothing else."""
    who = f"bootstrap token {record.token_id}"
    if profile.name not in record.profiles:
        raise PermissionDenied(
            f"{who} does not allow profile {profile.name} (it allows: {', '.join(record.profiles)})"
        )
    if inputs.node_name != record.node_name:
        raise PermissionDenied(f"{who} is bound to node {record.node_name!r}")
    allowed_ips = set(record.addresses)
    for ip in sans.ips:
        if str(ip) not in allowed_ips:
            raise PermissionDenied(f"{who} does not allow address {ip}")
    for name in sans.dns:
        if name != record.node_name:
            raise PermissionDenied(f"{who} does not allow DNS name {name!r}")
    if lifetime > record.max_lifetime:
        # A token carries its creator's ceiling: it may not outlive what they could get.
        raise PermissionDenied(
            f"{who} allows lifetimes up to {int(record.max_lifetime.total_seconds())}s"
        )
