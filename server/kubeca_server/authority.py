"""The only place that decides: authenticate, authorize, render, check, lint, sign,
audit, return.

Every decision, issued or refused, leaves exactly one audit record, and a certificate
is returned only after its record is on disk.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from kubeca_client.errors import (
    InvalidArgument,
    KubecaError,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from kubeca_client.keys import spki_der

from kubeca_server import grants, tokens
from kubeca_server.audit import AuditLog
from kubeca_server.authorities import CertificateAuthority
from kubeca_server.config import Grant, LeafConfig
from kubeca_server.csr import (
    check_requested_sans,
    check_requested_subject,
    leaf_public_key,
    parse_csr,
)
from kubeca_server.keys import signature_hash
from kubeca_server.ledger import canonical
from kubeca_server.lint import Linter
from kubeca_server.profiles import MIN_LIFETIME, PROFILES, Profile, build_leaf, parse_inputs
from kubeca_server.serials import new_serial
from kubeca_server.store import CertificateRow, Store, TokenRecord

log = structlog.get_logger("kubeca.authority")

MAX_PARAMETERS = 32
CLAIM_WAIT_SECONDS = 10.0
CLAIM_POLL_SECONDS = 0.02
OPERATOR, TOKEN, ANONYMOUS = "operator", "token", "anonymous"


@dataclass(frozen=True)
class Caller:
    """Who asked, as the service layer established it from TLS and metadata."""

    identity: str  # an operator's certificate CN, "token:<id>", or "anonymous"
    peer: str = ""
    kind: str = OPERATOR
    token: str = field(default="", repr=False)  # the bootstrap token secret; never logged


@dataclass(frozen=True)
class IssueRequest:
    profile: str
    csr: bytes
    parameters: Mapping[str, str] = field(default_factory=dict)
    lifetime: timedelta | None = None
    force_new: bool = False


@dataclass(frozen=True)
class IssuedCertificate:
    certificate: x509.Certificate
    authority: CertificateAuthority
    profile: Profile
    reused: bool = False

    @property
    def certificate_pem(self) -> str:
        return self.certificate.public_bytes(Encoding.PEM).decode()

    @property
    def serial_hex(self) -> str:
        return format(self.certificate.serial_number, "x")

    @property
    def fingerprint_sha256(self) -> str:
        return self.certificate.fingerprint(hashes.SHA256()).hex()


@dataclass(frozen=True)
class ProfileView:
    profile: Profile
    enabled: bool
    default_lifetime: timedelta
    max_lifetime: timedelta


@dataclass(frozen=True)
class _Permit:
    """What authentication established: an operator's grant, or a token's record."""

    grant: Grant | None = None
    token: TokenRecord | None = None


class Authority:
    def __init__(
        self,
        authorities: Mapping[str, CertificateAuthority],
        leaf: LeafConfig,
        audit: AuditLog,
        linter: Linter,
        *,
        grants: Mapping[str, Grant],
        store: Store | None = None,
        enable_super_admin: bool = False,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._authorities = dict(authorities)
        self._leaf = leaf
        self._audit = audit
        self._linter = linter
        self._grants = dict(grants)
        self._store = store
        self._enable_super_admin = enable_super_admin
        self._clock = clock

    # --- who is asking -----------------------------------------------------------------

    def _authenticate(self, caller: Caller) -> _Permit:
        if caller.kind == OPERATOR:
            grant = self._grants.get(caller.identity)
            if grant is None:
                raise PermissionDenied(f"identity {caller.identity!r} has no grant")
            return _Permit(grant=grant)
        if caller.kind == TOKEN:
            if self._store is None:
                raise Unauthenticated(tokens.INVALID)
            return _Permit(token=tokens.authenticate(self._store, caller.token, self._clock()))
        raise Unauthenticated(
            "this call needs a client certificate (operators) or a bootstrap token (nodes)"
        )

    def _server_enables(self, profile: Profile) -> bool:
        return self._enable_super_admin or not profile.grants_system_masters

    def _permits(self, permit: _Permit, profile: Profile) -> bool:
        if not self._server_enables(profile):
            return False
        if permit.grant is not None:
            return grants.allows_profile(permit.grant, profile)
        return permit.token is not None and profile.name in permit.token.profiles

    # --- reads -------------------------------------------------------------------------

    def ca_certificates(self, name: str = "") -> list[CertificateAuthority]:
        """Anyone may read the CA certificates: they are what a node must trust."""
        if not name:
            return list(self._authorities.values())
        if name not in self._authorities:
            known = ", ".join(self._authorities)
            raise NotFound(f"no certificate authority named {name[:64]!r} (known: {known})")
        return [self._authorities[name]]

    def profiles(self, caller: Caller) -> list[ProfileView]:
        permit = self._authenticate(caller)
        return [
            ProfileView(
                p, self._permits(permit, p), self._leaf.default_lifetime, self._leaf.max_lifetime
            )
            for p in PROFILES.values()
        ]

    # --- the decision ------------------------------------------------------------------

    def record_refusal(self, caller: Caller, method: str, error: KubecaError) -> None:
        """Audit a request refused before it could be read (e.g. undecodable bytes)."""
        self._audit.refused(
            "request.refused", error, method=method, caller=caller.identity, peer=caller.peer
        )

    def issue(self, caller: Caller, request: IssueRequest) -> IssuedCertificate:
        record: dict[str, Any] = {
            "caller": caller.identity,
            "peer": caller.peer,
            "profile": request.profile[:64],
            "parameters": {
                k[:64]: v[:256] for k, v in list(request.parameters.items())[:MAX_PARAMETERS]
            },
            "lifetime_seconds": int(request.lifetime.total_seconds()) if request.lifetime else 0,
        }
        try:
            issued = self._decide(caller, request, record)
        except Exception as exc:
            self._release_claim(record)
            if not isinstance(exc, KubecaError):
                log.exception("issue.failed", profile=record["profile"])
            self._audit.refused("certificate.refused", exc, **record)
            raise
        claimed = bool(record.pop("claimed", False))
        if issued.reused:
            self._audit.record(
                "certificate.reused",
                outcome="reused",
                authority=issued.authority.name,
                serial=issued.serial_hex,
                fingerprint_sha256=issued.fingerprint_sha256,
                **record,
            )
            return issued
        # The record, and the inventory row in the same transaction (which also ends
        # the claim), must be durable before the certificate leaves: AuditLog.record
        # raises when it cannot.
        try:
            self._write_issued(issued, record)
        except BaseException:
            if claimed and self._store is not None:
                self._store.release_claim(record["request_fingerprint"])
            raise
        return issued

    def _release_claim(self, record: dict[str, Any]) -> None:
        """Give up a claim taken in _decide, so identical requests need not wait it out."""
        if record.pop("claimed", False) and self._store is not None:
            self._store.release_claim(record["request_fingerprint"])

    def _write_issued(self, issued: IssuedCertificate, record: dict[str, Any]) -> None:
        masters = issued.profile.grants_system_masters
        self._audit.record(
            "certificate.issued",
            "critical" if masters else "info",
            outcome="issued",
            authority=issued.authority.name,
            serial=issued.serial_hex,
            fingerprint_sha256=issued.fingerprint_sha256,
            subject=issued.certificate.subject.rfc4514_string(),
            not_before=issued.certificate.not_valid_before_utc.isoformat(),
            not_after=issued.certificate.not_valid_after_utc.isoformat(),
            system_masters=masters,
            certificate=self._inventory_row(issued, record) if self._store else None,
            **record,
        )

    def _inventory_row(self, issued: IssuedCertificate, record: dict[str, Any]) -> CertificateRow:
        certificate = issued.certificate
        try:
            names = certificate.extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            ).value
            sans = (
                *names.get_values_for_type(x509.DNSName),
                *map(str, names.get_values_for_type(x509.IPAddress)),
            )
        except x509.ExtensionNotFound:
            sans = ()
        return CertificateRow(
            serial=issued.serial_hex,
            authority=issued.authority.name,
            profile=issued.profile.name,
            subject=certificate.subject.rfc4514_string(),
            sans=tuple(sans),
            public_key_sha256=record["public_key_sha256"],
            fingerprint_sha256=issued.fingerprint_sha256,
            not_before=certificate.not_valid_before_utc,
            not_after=certificate.not_valid_after_utc,
            caller=record["caller"],
            request_fingerprint=record["request_fingerprint"],
            certificate_pem=issued.certificate_pem,
        )

    def _decide(
        self, caller: Caller, request: IssueRequest, record: dict[str, Any]
    ) -> IssuedCertificate:
        permit = self._authenticate(caller)
        profile = PROFILES.get(request.profile)
        if profile is None:
            raise NotFound(
                f"no profile named {request.profile[:64]!r}; known profiles: " + ", ".join(PROFILES)
            )
        if not self._server_enables(profile):
            raise PermissionDenied(
                f"profile {profile.name} issues {profile.organizations[0]} certificates "
                "(unrevocable cluster-admin) and is disabled; an operator must enable it "
                "explicitly in the server config ([profiles] enable_super_admin = true) "
                "and name it in the caller's grant"
            )
        if len(request.parameters) > MAX_PARAMETERS:
            raise InvalidArgument(f"at most {MAX_PARAMETERS} parameters are accepted")
        csr = parse_csr(request.csr)
        record["requested_subject"] = csr.subject.rfc4514_string()[:512]
        public_key = leaf_public_key(csr)
        record["public_key_sha256"] = hashlib.sha256(spki_der(public_key)).hexdigest()
        inputs = parse_inputs(profile, request.parameters)
        subject = profile.subject(inputs)
        sans = profile.sans(inputs)
        check_requested_subject(csr, subject)
        check_requested_sans(csr, sans)
        ceiling = (
            permit.grant.max_lifetime
            if permit.grant is not None
            else permit.token.max_lifetime
            if permit.token is not None
            else None
        )
        lifetime = self._lifetime(request.lifetime, ceiling)
        if permit.grant is not None:
            grants.check_request(permit.grant, profile, inputs, sans, lifetime)
        if permit.token is not None:
            tokens.check_request(permit.token, profile, inputs, sans, lifetime)
            record["token_id"] = permit.token.token_id
        authority = self._authorities[profile.authority]
        now = self._clock()
        record["request_fingerprint"] = _request_fingerprint(caller, request, record)
        if self._store is not None and permit.token is None and not request.force_new:
            # Idempotency: the same question again (Terraform asks on every plan) gets
            # the same answer while it is current, without a new HSM signature.
            existing = self._claim_or_reuse(record["request_fingerprint"])
            if existing is not None:
                certificate = x509.load_pem_x509_certificate(existing.certificate_pem.encode())
                return IssuedCertificate(certificate, authority, profile, reused=True)
            record["claimed"] = True
        expiry = authority.certificate.not_valid_after_utc
        if expiry <= now:
            raise Unavailable(
                f"{authority.name} expired at {expiry.isoformat()} and can issue nothing more"
            )
        builder = build_leaf(
            profile, inputs, public_key, authority.issuer, new_serial(), now, lifetime
        )
        self._linter.check(builder, authority.key)
        if permit.token is not None:
            self._consume(permit.token, profile, now)
        try:
            certificate = builder.sign(authority.key, signature_hash(authority.key))
            # A faulty HSM or a key swapped under us must not produce a bad certificate.
            certificate.verify_directly_issued_by(authority.certificate)
        except BaseException:
            if permit.token is not None:
                self._release(permit.token, profile)
            raise
        return IssuedCertificate(certificate, authority, profile)

    def _claim_or_reuse(self, fingerprint: str) -> CertificateRow | None:
        """The current certificate for this request, or None once this caller holds the
        claim to sign it. Identical requests that overlap wait here for the first one's
        certificate instead of each signing their own."""
        assert self._store is not None
        deadline = time.monotonic() + CLAIM_WAIT_SECONDS
        while True:
            outcome = self._store.claim_or_reuse(fingerprint, self._clock())
            if isinstance(outcome, CertificateRow):
                return outcome
            if outcome:
                return None
            if time.monotonic() > deadline:
                raise Unavailable("an identical request is still being issued; try again")
            time.sleep(CLAIM_POLL_SECONDS)

    def _consume(self, token: TokenRecord, profile: Profile, now: datetime) -> None:
        """Use the token for this profile; of two concurrent uses, exactly one wins."""
        assert self._store is not None
        if not self._store.consume_token(token.token_id, profile.name, now):
            raise Unauthenticated(tokens.INVALID)

    def _release(self, token: TokenRecord, profile: Profile) -> None:
        assert self._store is not None
        self._store.release_token(token.token_id, profile.name)

    def _lifetime(self, requested: timedelta | None, ceiling: timedelta | None) -> timedelta:
        if requested is None:
            # A grant's (or token's) ceiling lowers the default too, so callers need not
            # say so.
            default = self._leaf.default_lifetime
            return min(default, ceiling) if ceiling is not None else default
        if requested <= timedelta(0):
            raise InvalidArgument(
                "lifetime must be positive (leave it 0 or unset for the profile's default)"
            )
        if requested < MIN_LIFETIME:
            raise InvalidArgument(
                f"lifetime of {int(requested.total_seconds())}s is below the minimum of "
                f"{int(MIN_LIFETIME.total_seconds())}s"
            )
        if requested > self._leaf.max_lifetime:
            maximum = self._leaf.max_lifetime
            raise InvalidArgument(
                f"requested lifetime exceeds the maximum of {int(maximum.total_seconds())}s "
                f"({maximum.days} days)"
            )
        return requested

    # --- the inventory and revocation ---------------------------------------------------

    def _operator(self, caller: Caller) -> Grant:
        permit = self._authenticate(caller)
        if permit.grant is None:
            raise PermissionDenied("only operators may read the inventory or revoke")
        return permit.grant

    def certificates(
        self,
        caller: Caller,
        authority: str = "",
        profile: str = "",
        expiring_within: timedelta | None = None,
        revoked_only: bool = False,
    ) -> list[CertificateRow]:
        grant = self._operator(caller)
        if self._store is None:
            return []
        before = self._clock() + expiring_within if expiring_within else None
        rows = self._store.list_certificates(authority, profile, before, revoked_only)
        # An operator sees what its grant could have issued, not the whole CA.
        return [r for r in rows if grants.allows_profile(grant, PROFILES[r.profile])]

    def revoke(self, caller: Caller, serial: str, reason: str) -> CertificateRow:
        """Mark a certificate revoked, audited in the same transaction."""
        fields: dict[str, Any] = {
            "caller": caller.identity,
            "peer": caller.peer,
            "serial": serial[:64],
        }
        try:
            grant = self._operator(caller)
            if not grant.revoke:
                raise PermissionDenied(
                    f"grant {grant.identity!r} may not revoke (it needs revoke = true)"
                )
            if self._store is None:
                raise NotFound("this server keeps no inventory")
            # As issue prints it, or as openssl prints it (upper case, zero-padded).
            normalized = serial.strip().lower().removeprefix("0x").replace(":", "").lstrip("0")
            row = self._store.find_certificate(normalized)
            if row is None:
                raise NotFound(f"no certificate with serial {serial[:64]!r} was issued here")
            if not grants.allows_profile(grant, PROFILES[row.profile]):
                raise PermissionDenied(
                    f"grant {grant.identity!r} does not allow profile {row.profile}, so it "
                    "may not revoke its certificates either"
                )
            if row.revoked_at is not None:
                raise InvalidArgument(f"certificate {normalized} was revoked already")
            now = self._clock()
            self._audit.record(
                "certificate.revoked",
                "warning",
                outcome="revoked",
                reason=reason,
                authority=row.authority,
                profile=row.profile,
                subject=row.subject,
                revoke=(normalized, now, reason),
                **{**fields, "serial": normalized},
            )
        except KubecaError as exc:
            self._audit.refused("certificate.revoke_refused", exc, **fields)
            raise
        revoked = self._store.find_certificate(normalized)
        assert revoked is not None
        return revoked


def _request_fingerprint(caller: Caller, request: IssueRequest, record: dict[str, Any]) -> str:
    """What makes two requests "the same": who, which profile, which inputs, which key."""
    material = canonical(
        {
            "caller": caller.identity,
            "profile": request.profile,
            "parameters": dict(sorted(request.parameters.items())),
            "requested_subject": record.get("requested_subject", ""),
            "public_key_sha256": record.get("public_key_sha256", ""),
            "lifetime_seconds": record.get("lifetime_seconds", 0),
        }
    )
    return hashlib.sha256(material.encode()).hexdigest()
