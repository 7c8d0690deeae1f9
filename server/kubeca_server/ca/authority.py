"""A certificate authority and its key generations.

A CA is a name and one or more generations. Each generation is one HSM key, the CA
certificate for it, and a state: the one ``issuing`` generation signs new certificates;
``trusted`` ones are published in the trust bundle and verify what they signed before;
``retired`` ones are neither. Rotation (a new generation, then switching which one
issues, then retiring the old) is therefore a change of states, not of code.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cached_property

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from kubeca_client.errors import FailedPrecondition, InternalError
from kubeca_client.keys import spki_hash

from kubeca_server.ca.signer import Prepared, Signer
from kubeca_server.keys import CAPublicKey
from kubeca_server.profiles import Issuer
from kubeca_server.store.records import GenerationState, Provenance


def key_identifier(certificate: x509.Certificate) -> bytes:
    """The certificate's SubjectKeyIdentifier (computed from its key if it has none)."""
    try:
        return certificate.extensions.get_extension_for_class(
            x509.SubjectKeyIdentifier
        ).value.digest
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(certificate.public_key()).digest


def authority_key_identifier(certificate: x509.Certificate) -> bytes | None:
    """The AuthorityKeyIdentifier's key id of a certificate, if it names one."""
    try:
        value = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except (x509.ExtensionNotFound, ValueError):
        return None
    return value.key_identifier


# Both are frozen, and what their cached properties derive from (a certificate, a tuple
# of generations) never changes: each is computed once, not on every request.
@dataclass(frozen=True)
class Generation:
    """One key generation of a CA: its certificate, its signer, its state.

    ``prepare`` and ``sign`` are the only way this generation's key signs (see
    ``ca.signer``); ``issuer`` is what a certificate it signs takes from it."""

    authority: str
    number: int
    certificate: x509.Certificate
    signer: Signer
    state: GenerationState
    provenance: Provenance
    # This generation's certificate signed by the one before it (rotation), or "".
    cross_certificate_pem: str = ""

    @cached_property
    def certificate_pem(self) -> str:
        return self.certificate.public_bytes(Encoding.PEM).decode()

    @cached_property
    def ca_cert_hash(self) -> str:
        return spki_hash(self.certificate)

    @cached_property
    def key_id(self) -> bytes:
        return key_identifier(self.certificate)

    @cached_property
    def key_id_hex(self) -> str:
        return self.key_id.hex()

    @property
    def public_key(self) -> CAPublicKey:
        return self.signer.public_key

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc

    @cached_property
    def issuer(self) -> Issuer:
        return Issuer(self.certificate.subject, self.key_id, self.not_after)

    def prepare(self, builder: x509.CertificateBuilder) -> Prepared[x509.Certificate]:
        return self.signer.prepare(builder)

    def sign(self, prepared: Prepared[x509.Certificate]) -> x509.Certificate:
        return self.signer.sign(prepared)

    def prepare_crl(
        self, builder: x509.CertificateRevocationListBuilder
    ) -> Prepared[x509.CertificateRevocationList]:
        return self.signer.prepare_crl(builder)

    def sign_crl(
        self, prepared: Prepared[x509.CertificateRevocationList]
    ) -> x509.CertificateRevocationList:
        return self.signer.sign_crl(prepared)


@dataclass(frozen=True)
class CertificateAuthority:
    """A named CA: its generations in order, exactly one of them issuing."""

    name: str
    generations: tuple[Generation, ...]

    @cached_property
    def issuing(self) -> Generation:
        issuing = [g for g in self.generations if g.state is GenerationState.ISSUING]
        if len(issuing) != 1:
            raise InternalError(f"{self.name} has {len(issuing)} issuing generations, not one")
        return issuing[0]

    @property
    def published(self) -> tuple[Generation, ...]:
        """What the trust bundle holds: the issuing generation first, then the trusted."""
        rest = [g for g in self.generations if g.state is GenerationState.TRUSTED]
        return (self.issuing, *rest)

    @cached_property
    def bundle_pem(self) -> str:
        return "".join(g.certificate_pem for g in self.published)

    def generation(self, number: int) -> Generation | None:
        return next((g for g in self.generations if g.number == number), None)

    def by_key_id(self, key_id: bytes) -> Generation | None:
        return next((g for g in self.generations if g.key_id == key_id), None)

    def signer_of(self, certificate: x509.Certificate) -> Generation | None:
        """The generation that signed ``certificate``, by its AuthorityKeyIdentifier."""
        key_id = authority_key_identifier(certificate)
        return self.by_key_id(key_id) if key_id is not None else None

    def usable_issuer(self, now: datetime) -> Generation:
        """The issuing generation, if it can still sign: an expired CA is a state an
        operator must fix (rotate), not an outage to retry."""
        issuing = self.issuing
        if issuing.not_after <= now:
            raise FailedPrecondition(
                f"{self.name} expired at {issuing.not_after.isoformat()} and can issue "
                "nothing more; rotate it (kubeca-server ca rotate begin)"
            )
        return issuing
