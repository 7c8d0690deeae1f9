"""Certificate revocation lists, one per CA (the service CA's lists revoked operator
credentials), signed in the HSM.

Published as DER (etcd 3.6 reads DER only) to state_dir/crl/<ca>.crl on every
revocation and again before half the validity has passed, so a consumer re-reading
the file (etcd does, on every handshake) never holds an expired CRL. kube-apiserver
checks no CRLs: for it, short certificate lifetimes are the only revocation.
"""

from __future__ import annotations

import fcntl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from kubeca_client.files import PUBLIC, atomic_write
from kubeca_client.revocation import REASONS as REVOCATION_REASONS

from kubeca_server.ca.authority import Generation
from kubeca_server.ca.registry import CARegistry
from kubeca_server.ledger.audit import Entry, Ledger

DEFAULT_VALIDITY = timedelta(days=7)
# Every reason kubeca_client.revocation accepts (and stores), as the CRL entry's code.
REASONS: Mapping[str, x509.ReasonFlags] = {
    name: x509.ReasonFlags[name] for name in REVOCATION_REASONS
}


@dataclass(frozen=True)
class PublishedCRL:
    der: bytes
    number: int
    this_update: datetime
    next_update: datetime


class CRLPublisher:
    """Each CA's CRL: signed by its issuing generation, written where relying parties
    (etcd) re-read it, never going backwards."""

    def __init__(
        self,
        registry: CARegistry,
        ledger: Ledger,
        directory: Path,
        validity: timedelta = DEFAULT_VALIDITY,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._registry = registry
        self._ledger = ledger
        self._directory = directory
        self._validity = validity
        self._clock = clock
        self._lock = threading.Lock()

    def path(self, authority: str) -> Path:
        return self._directory / f"{authority}.crl"

    def _issuer(self, name: str) -> Generation:
        return self._registry.get(name).issuing

    def publish(self, name: str) -> PublishedCRL:
        """Sign a new CRL listing every revoked certificate of ``name`` and write it."""
        issuer = self._issuer(name)
        with self._lock:
            now = self._clock().replace(microsecond=0)
            # The number and the revocations it lists are read in one transaction, so a
            # higher number never lists fewer revocations than a lower one.
            with self._ledger.store.unit() as unit:
                number = unit.crl_numbers.next(name)
                revoked = unit.inventory.revoked(name)
            builder = (
                x509.CertificateRevocationListBuilder()
                .issuer_name(issuer.certificate.subject)
                .last_update(now)
                .next_update(now + self._validity)
                .add_extension(x509.CRLNumber(number), critical=False)
                .add_extension(issuer.issuer.authority_key_identifier, critical=False)
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
            crl = issuer.sign_crl(issuer.prepare_crl(builder))
            der = crl.public_bytes(Encoding.DER)
            self._write_if_newer(name, der, number)
            self._ledger.commit(
                Entry(
                    "crl.generated",
                    {
                        "authority": name,
                        "generation": issuer.number,
                        "crl_number": number,
                        "revoked": len(crl),
                        "next_update": (now + self._validity).isoformat(),
                    },
                )
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
        self._issuer(name)
        found = self._on_disk(name)
        if found is None:
            return self.publish(name)
        der, crl, number = found
        next_update = crl.next_update_utc
        with self._ledger.store.unit(read_only=True) as unit:
            handed_out = unit.crl_numbers.current(name)
        if (
            next_update is None
            or next_update - self._clock() < self._validity / 2
            or number < handed_out
        ):
            return self.publish(name)
        return PublishedCRL(der, number, crl.last_update_utc, next_update)

    def refresh_all(self) -> None:
        # The service CA's too: it lists revoked operator credentials.
        for name in self._registry.snapshot():
            self.current(name)
