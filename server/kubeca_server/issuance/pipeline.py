"""The issuance pipeline: authenticate -> permit -> render -> check -> prepare -> sign
-> record, as named stages over frozen values.

Untrusted input (the CSR and the parameters) is read once, in the permit stage; the
certificate is rendered from the profile alone; the check stage holds the rendered
template against what the CSR asked for; the CA generation lints (prepare) and signs
the template; the record stage commits the audit record and the inventory row in one
transaction before anything is returned. What the issuance took on the way (an
idempotency claim, a token's use) lives in a ``Reservation``, released there if any
stage fails. A refusal leaves as an error carrying what the stages learned in its
``context``; the API layer writes its audit record, once, for every method.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from kubeca_client.errors import InvalidArgument, KubecaError, NotFound, PermissionDenied
from kubeca_client.keys import spki_der
from kubeca_client.names import SubjectAltNames
from kubeca_client.text import clip

from kubeca_server.ca.authority import Generation, authority_key_identifier
from kubeca_server.ca.registry import CARegistry
from kubeca_server.config import LeafConfig
from kubeca_server.csr import (
    check_requested_sans,
    check_requested_subject,
    leaf_public_key,
    parse_csr,
)
from kubeca_server.issuance.model import (
    MAX_PARAMETERS,
    Caller,
    IssuedCertificate,
    IssueRequest,
    ProfileView,
)
from kubeca_server.issuance.permits import Gatekeeper, Permit
from kubeca_server.issuance.reservation import Reservation
from kubeca_server.ledger.audit import Entry, Ledger
from kubeca_server.ledger.chain import canonical
from kubeca_server.profiles import (
    MIN_LIFETIME,
    PROFILES,
    Inputs,
    LeafPublicKey,
    Profile,
    build_leaf,
    parse_inputs,
)
from kubeca_server.serials import new_serial
from kubeca_server.store import CertificateRow
from kubeca_server.store.changes import AddCertificate


@dataclass(frozen=True)
class Permitted:
    """The permit stage's verdict: the request, read once, and within the permit."""

    permit: Permit
    profile: Profile
    csr: x509.CertificateSigningRequest
    public_key: LeafPublicKey
    inputs: Inputs
    sans: SubjectAltNames
    lifetime: timedelta
    fingerprint: str  # what makes two requests "the same"
    # Read from the CSR once: the fingerprint, the records and the row all name them.
    requested_subject: str
    public_key_sha256: str

    def fields(self) -> dict[str, Any]:
        """What the decision learned, for its audit record."""
        return {
            "requested_subject": self.requested_subject,
            "public_key_sha256": self.public_key_sha256,
            "request_fingerprint": self.fingerprint,
            **self.permit.fields(),
        }


@dataclass(frozen=True)
class Template:
    """The render stage's certificate, before lint and signature."""

    generation: Generation
    builder: x509.CertificateBuilder
    subject: x509.Name
    sans: SubjectAltNames


class IssuancePipeline:
    """The only place a certificate is decided: every request, from any caller and any
    front end (the gRPC API, Terraform through it), passes the same stages in the same
    order, and only a certificate whose record is committed is returned."""

    def __init__(
        self,
        registry: CARegistry,
        gatekeeper: Gatekeeper,
        ledger: Ledger,
        leaf: LeafConfig,
        clock: Callable[[], datetime],
        *,
        enable_super_admin: bool = False,
    ) -> None:
        self._registry = registry
        self._gatekeeper = gatekeeper
        self._ledger = ledger
        self._leaf = leaf
        self._clock = clock
        self._enable_super_admin = enable_super_admin

    # --- what a caller may ask for ----------------------------------------------------

    def _server_enables(self, profile: Profile) -> bool:
        return self._enable_super_admin or not profile.grants_system_masters

    def profiles(self, caller: Caller) -> list[ProfileView]:
        permit = self._gatekeeper.authenticate(caller)
        return [
            ProfileView(
                p,
                self._server_enables(p) and permit.allows(p),
                min(self._leaf.default_lifetime, permit.ceiling),
                self._leaf.max_lifetime,
            )
            for p in PROFILES.values()
        ]

    # --- the pipeline -------------------------------------------------------------------

    def issue(self, caller: Caller, request: IssueRequest) -> IssuedCertificate:
        permit = self._gatekeeper.authenticate(caller)
        learned: Mapping[str, Any] = permit.fields()
        try:
            permitted = self._permit(caller, permit, request)
            learned = permitted.fields()
            with Reservation(self._ledger.store, self._clock) as held:
                if permit.idempotent and not request.force_new:
                    existing = held.claim_or_reuse(permitted.fingerprint, self._reusable)
                    if existing is not None:
                        return self._reuse(caller, request, permitted, existing)
                template = self._render(permitted, self._clock())
                self._check(permitted, template)
                prepared = template.generation.prepare(template.builder)
                held.use(permit, permitted.profile)
                certificate = template.generation.sign(prepared)
                issued = IssuedCertificate(certificate, template.generation, permitted.profile)
                self._record(caller, request, permitted, issued)
                held.keep()
            return issued
        except KubecaError as exc:
            raise exc.in_context(learned) from None

    def _permit(self, caller: Caller, permit: Permit, request: IssueRequest) -> Permitted:
        """Read the request once and hold it against the server and the permit."""
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
        requested_subject = clip(csr.subject.rfc4514_string(), 512)
        try:
            public_key = leaf_public_key(csr)
            inputs = parse_inputs(profile, request.parameters)
            sans = profile.sans(inputs)
            lifetime = self._lifetime(request.lifetime, permit.ceiling)
            permit.check(profile, inputs, sans, lifetime)
        except KubecaError as exc:
            # The refusal's record still says what was asked for (an escalation attempt
            # shows its requested subject).
            raise exc.in_context({"requested_subject": requested_subject}) from None
        key_sha256 = hashlib.sha256(spki_der(public_key)).hexdigest()
        fingerprint = _fingerprint(caller, request, requested_subject, key_sha256)
        return Permitted(
            permit,
            profile,
            csr,
            public_key,
            inputs,
            sans,
            lifetime,
            fingerprint,
            requested_subject,
            key_sha256,
        )

    def _lifetime(self, requested: timedelta | None, ceiling: timedelta) -> timedelta:
        if requested is None:
            # A permit's ceiling lowers the default too, so callers need not say so.
            return min(self._leaf.default_lifetime, ceiling)
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

    def _reusable(self, row: CertificateRow) -> bool:
        """An earlier certificate is handed back only if the issuing generation signed
        it: after a rotation switch, the same request gets a certificate of the new one."""
        issuing = self._registry.get(row.authority).issuing
        if row.issuer_key_id:
            return row.issuer_key_id == issuing.key_id_hex
        certificate = x509.load_pem_x509_certificate(row.certificate_pem.encode())
        return authority_key_identifier(certificate) == issuing.key_id

    def _render(self, permitted: Permitted, now: datetime) -> Template:
        generation = self._registry.get(permitted.profile.authority).usable_issuer(now)
        builder = build_leaf(
            permitted.profile,
            permitted.inputs,
            permitted.public_key,
            generation.issuer,
            new_serial(),
            now,
            permitted.lifetime,
        )
        return Template(
            generation, builder, permitted.profile.subject(permitted.inputs), permitted.sans
        )

    def _check(self, permitted: Permitted, template: Template) -> None:
        """The CSR supplies a key and proof of possession; a subject or SANs in it must
        be ones the rendered certificate carries."""
        check_requested_subject(permitted.csr, template.subject)
        check_requested_sans(permitted.csr, template.sans)

    def _summary(
        self, caller: Caller, request: IssueRequest, permitted: Permitted
    ) -> dict[str, Any]:
        return {**caller.fields(), **request.fields(), **permitted.fields()}

    def _record(
        self,
        caller: Caller,
        request: IssueRequest,
        permitted: Permitted,
        issued: IssuedCertificate,
    ) -> None:
        certificate = issued.certificate
        masters = issued.profile.grants_system_masters
        fields = self._summary(caller, request, permitted)
        row = CertificateRow(
            serial=issued.serial_hex,
            authority=issued.authority,
            profile=issued.profile.name,
            subject=certificate.subject.rfc4514_string(),
            sans=(*permitted.sans.dns, *map(str, permitted.sans.ips)),
            public_key_sha256=fields["public_key_sha256"],
            fingerprint_sha256=issued.fingerprint_sha256,
            not_before=certificate.not_valid_before_utc,
            not_after=certificate.not_valid_after_utc,
            caller=caller.identity,
            request_fingerprint=permitted.fingerprint,
            certificate_pem=issued.certificate_pem,
            issuer_key_id=issued.generation.key_id_hex,
        )
        # Durable, with the inventory row, before the certificate leaves.
        self._ledger.commit(
            Entry(
                "certificate.issued",
                {
                    **fields,
                    "outcome": "issued",
                    "authority": issued.authority,
                    "generation": issued.generation.number,
                    "serial": issued.serial_hex,
                    "fingerprint_sha256": issued.fingerprint_sha256,
                    "subject": row.subject,
                    "not_before": row.not_before.isoformat(),
                    "not_after": row.not_after.isoformat(),
                    "system_masters": masters,
                },
                "critical" if masters else "info",
                AddCertificate(row),
            )
        )

    def _reuse(
        self,
        caller: Caller,
        request: IssueRequest,
        permitted: Permitted,
        existing: CertificateRow,
    ) -> IssuedCertificate:
        """The same question again (Terraform asks on every plan) gets the same answer
        while it is current, without a new HSM signature."""
        certificate = x509.load_pem_x509_certificate(existing.certificate_pem.encode())
        generation = self._registry.get(existing.authority).issuing
        issued = IssuedCertificate(certificate, generation, permitted.profile, reused=True)
        self._ledger.commit(
            Entry(
                "certificate.reused",
                {
                    **self._summary(caller, request, permitted),
                    "outcome": "reused",
                    "authority": issued.authority,
                    "serial": issued.serial_hex,
                    "fingerprint_sha256": issued.fingerprint_sha256,
                },
            )
        )
        return issued


def _fingerprint(
    caller: Caller, request: IssueRequest, requested_subject: str, public_key_sha256: str
) -> str:
    """What makes two requests "the same": who, which profile, which inputs, which key."""
    material = canonical(
        {
            "caller": caller.identity,
            "profile": request.profile,
            "parameters": dict(sorted(request.parameters.items())),
            "requested_subject": requested_subject,
            "public_key_sha256": public_key_sha256,
            "lifetime_seconds": int(request.lifetime.total_seconds()) if request.lifetime else 0,
        }
    )
    return hashlib.sha256(material.encode()).hexdigest()
