"""The values the store keeps: frozen records, free of any database dialect."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum


@dataclass(frozen=True)
class TokenRecord:
    token_id: str
    secret_hash: str
    profiles: tuple[str, ...]
    node_name: str
    addresses: tuple[str, ...]
    expires_at: datetime
    created_by: str
    created_at: datetime
    used_profiles: tuple[str, ...] = ()
    revoked: bool = False
    max_lifetime: timedelta = timedelta(days=365)


@dataclass(frozen=True)
class CertificateRow:
    serial: str  # lower-case hex
    authority: str
    profile: str
    subject: str
    sans: tuple[str, ...]
    public_key_sha256: str
    fingerprint_sha256: str
    not_before: datetime
    not_after: datetime
    caller: str
    request_fingerprint: str
    certificate_pem: str
    audit_seq: int = 0  # the chain record that issued it; set when it is committed
    revoked_at: datetime | None = None
    revocation_reason: str | None = None
    issuer_key_id: str = ""  # hex SubjectKeyIdentifier of the CA generation that signed it


@dataclass(frozen=True)
class InventoryQuery:
    """Which certificates a listing wants; empty fields match everything."""

    authority: str = ""
    profile: str = ""
    expiring_before: datetime | None = None
    revoked_only: bool = False


@dataclass(frozen=True)
class InventoryCursor:
    """Where a page of the inventory ended: listings go in (not_after, serial) order."""

    not_after: datetime
    serial: str


@dataclass(frozen=True)
class TokenCursor:
    """Where a page of bootstrap tokens ended: they go latest-expiring first, in
    (expires_at, token_id) descending order."""

    expires_at: datetime
    token_id: str


class GenerationState(StrEnum):
    ISSUING = "issuing"  # signs new certificates; exactly one per CA
    TRUSTED = "trusted"  # published and trusted, but signs nothing new
    RETIRED = "retired"  # neither published nor trusted


class Provenance(StrEnum):
    GENERATED = "generated"  # made inside the token: always sensitive, never extractable
    IMPORTED = "imported"  # existed outside the token once; copies may survive elsewhere


class KeyKind(StrEnum):
    CA = "ca"  # an X.509 certificate authority: its generations have certificates
    JWT = "jwt"  # a token-signing key (service accounts): public keys, no certificates


@dataclass(frozen=True)
class GenerationRow:
    """One key generation of a CA (or of a token-signing key): its HSM key, by label,
    and its certificate (a CA) or public key (a token-signing key)."""

    authority: str
    generation: int
    key_label: str
    certificate_pem: str  # "" for a token-signing key
    state: GenerationState
    provenance: Provenance
    created_at: datetime
    kind: KeyKind = KeyKind.CA
    public_key_pem: str = ""  # SubjectPublicKeyInfo PEM (for a CA: of its certificate)
    # The new key's certificate signed by the generation before it (rotation), so a
    # client that trusts only the old CA accepts chains from the new one; "" if none.
    cross_certificate_pem: str = ""
    # When ``state`` last changed (None: it has the state it was added with).
    state_changed_at: datetime | None = None
