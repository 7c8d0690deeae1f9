"""Certificate revocation lists, one per cluster CA, signed in the HSM.

Published as DER (etcd 3.6 reads DER only) to state_dir/crl/<ca>.crl on every
revocation and again before half the validity has passed, so a consumer re-reading
the file (etcd does, on every handshake) never holds an expired CRL. kube-apiserver
checks no CRLs: for it, short certificate lifetimes are the only revocation.
"""

from __future__ import annotations

import fcntl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from kubeca_client.errors import InvalidArgument, NotFound
from kubeca_client.files import PUBLIC, atomic_write

from kubeca_server.audit import AuditLog
from kubeca_server.authorities import CertificateAuthority
from kubeca_server.keys import signature_hash
from kubeca_server.store import Store

DEFAULT_VALIDITY = timedelta(days=7)
REASONS: Mapping[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "key_compromise": x509.ReasonFlags.key_compromise,
    "affiliation_changed": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessation_of_operation": x509.ReasonFlags.cessation_of_operation,
    "certificate_hold": x509.ReasonFlags.certificate_hold,
    "privilege_withdrawn": x509.ReasonFlags.privilege_withdrawn,
}


def parse_reason(text: str) -> str:
    reason = text.strip().lower().replace("-", "_") or "unspecified"
    if reason not in REASONS:
        raise InvalidArgument(
            f"unknown revocation reason {text[:40]!r}; use one of {', '.join(REASONS)}"
        )
    return reason


@dataclass(frozen=True)
class PublishedCRL:
    der: bytes
    number: int
    this_update: datetime
    next_update: datetime


class CRLPublisher:
    def __init__(
        self,
        authorities: Mapping[str, CertificateAuthority],
        store: Store,
        audit: AuditLog,
        directory: Path,
        validity: timedelta = DEFAULT_VALIDITY,
    ) -> None:
        self._authorities = dict(authorities)
        self._store = store
        self._audit = audit
        self._directory = directory
        self._validity = validity
        self._lock = threading.Lock()

    def path(self, authority: str) -> Path:
        return self._directory / f"{authority}.crl"

    def _authority(self, name: str) -> CertificateAuthority:
        if name not in self._authorities:
            known = ", ".join(self._authorities)
            raise NotFound(f"no certificate authority named {name[:64]!r} (known: {known})")
        return self._authorities[name]

    def publish(self, name: str) -> PublishedCRL:
        """Sign a new CRL listing every revoked certificate of ``name`` and write it."""
        authority = self._authority(name)
        with self._lock:
            now = datetime.now(UTC).replace(microsecond=0)
            number, revoked = self._store.next_crl(name)
            builder = (
                x509.CertificateRevocationListBuilder()
                .issuer_name(authority.certificate.subject)
                .last_update(now)
                .next_update(now + self._validity)
                .add_extension(x509.CRLNumber(number), critical=False)
                .add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()),
                    critical=False,
                )
            )
            for row in revoked:
                assert row.revoked_at is not None
                entry = (
                    x509.RevokedCertificateBuilder()
                    .serial_number(int(row.serial, 16))
                    .revocation_date(row.revoked_at.replace(microsecond=0))
                )
                reason = REASONS.get(row.revocation_reason or "unspecified")
                # RFC 5280 5.3.1: leave the reason out rather than say "unspecified".
                if reason is not None and reason is not x509.ReasonFlags.unspecified:
                    entry = entry.add_extension(x509.CRLReason(reason), critical=False)
                builder = builder.add_revoked_certificate(entry.build())
            crl = builder.sign(authority.key, signature_hash(authority.key))
            der = crl.public_bytes(Encoding.DER)
            self._write_if_newer(name, der, number)
            self._audit.record(
                "crl.generated",
                authority=name,
                crl_number=number,
                revoked=len(crl),
                next_update=(now + self._validity).isoformat(),
            )
            return PublishedCRL(der, number, now, now + self._validity)

    def _on_disk(self, name: str) -> tuple[bytes, x509.CertificateRevocationList, int] | None:
        try:
            der = self.path(name).read_bytes()
            crl = x509.load_der_x509_crl(der)
            number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        except (OSError, ValueError, x509.ExtensionNotFound):
            return None
        return der, crl, number

    def _write_if_newer(self, name: str, der: bytes, number: int) -> None:
        """Workers publish concurrently: under a file lock shared by all of them, a CRL
        replaces the file only if its number is higher, so the file never goes back."""
        self._directory.mkdir(parents=True, exist_ok=True, mode=0o755)
        with open(self._directory / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = self._on_disk(name)
            if current is None or current[2] < number:
                atomic_write(self.path(name), der, PUBLIC)

    def current(self, name: str) -> PublishedCRL:
        """The CRL on disk; a new one when it is missing, half its validity is gone, or
        the database has handed out a newer number (a publish that failed or lost)."""
        self._authority(name)
        found = self._on_disk(name)
        if found is None:
            return self.publish(name)
        der, crl, number = found
        next_update = crl.next_update_utc
        if (
            next_update is None
            or next_update - datetime.now(UTC) < self._validity / 2
            or number < self._store.crl_number(name)
        ):
            return self.publish(name)
        return PublishedCRL(der, number, crl.last_update_utc, next_update)

    def refresh_all(self) -> None:
        for name in self._authorities:
            self.current(name)
