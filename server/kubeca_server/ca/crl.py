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

    def path(self, authority: str, generation: int | None = None) -> Path:
        """``<ca>.crl`` is the issuing generation's (what etcd's --client-crl-file reads);
        ``<ca>.<n>.crl`` is generation n's, for each other published generation, so during
        a rotation both the old and the new CA have a CRL of their own."""
        if generation is None:
            return self._directory / f"{authority}.crl"
        return self._directory / f"{authority}.{generation}.crl"

    @staticmethod
    def _counter(name: str, generation: int | None) -> str:
        return name if generation is None else f"{name}#{generation}"

    def publish(self, name: str) -> PublishedCRL:
        """Sign new CRLs for every published generation of ``name`` and write them; the
        issuing generation's is returned."""
        ca = self._registry.get(name)
        issuing = self._sign(name, ca.issuing, None)
        for generation in self._others(name):
            self._sign(name, generation, generation.number)
        return issuing

    def _others(self, name: str) -> list[Generation]:
        """Published generations besides the issuing one (only during a rotation)."""
        ca = self._registry.get(name)
        return [g for g in ca.published if g.number != ca.issuing.number]

    def _sign(self, name: str, issuer: Generation, file_generation: int | None) -> PublishedCRL:
        """One CRL signed by ``issuer``: for the authority's own file, every revoked
        certificate of the CA (a relying party reads one file, whichever generation
        signed the leaf); for a generation's file, those that generation signed."""
        counter = self._counter(name, file_generation)
        with self._lock:
            now = self._clock().replace(microsecond=0)
            # The number and the revocations it lists are read in one transaction, so a
            # higher number never lists fewer revocations than a lower one.
            with self._ledger.store.unit() as unit:
                number = unit.crl_numbers.next(counter)
                revoked = unit.inventory.revoked(name)
            if file_generation is not None:
                revoked = [r for r in revoked if r.issuer_key_id in ("", issuer.key_id_hex)]
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
            self._write_if_newer(self.path(name, file_generation), der, number)
            self._ledger.commit(
                Entry(
                    "crl.generated",
                    {
                        "authority": name,
                        "generation": issuer.number,
                        "file": self.path(name, file_generation).name,
                        "crl_number": number,
                        "revoked": len(crl),
                        "next_update": (now + self._validity).isoformat(),
                    },
                )
            )
            return PublishedCRL(der, number, now, now + self._validity)

    def _on_disk(self, path: Path) -> tuple[bytes, x509.CertificateRevocationList, int] | None:
        try:
            der = path.read_bytes()
            crl = x509.load_der_x509_crl(der)
            number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        except (OSError, ValueError, x509.ExtensionNotFound):
            return None
        return der, crl, number

    def _write_if_newer(self, path: Path, der: bytes, number: int) -> None:
        """Workers publish concurrently: under a file lock shared by all of them, a CRL
        replaces the file only if its number is higher, so the file never goes back."""
        self._directory.mkdir(parents=True, exist_ok=True, mode=0o755)
        with open(self._directory / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = self._on_disk(path)
            if current is None or current[2] < number:
                atomic_write(path, der, PUBLIC)

    def current(self, name: str) -> PublishedCRL:
        """The CRL on disk; a new one when it is missing, half its validity is gone, or
        the database has handed out a newer number (a publish that failed or lost)."""
        ca = self._registry.get(name)
        if any(self._stale(name, g.number, g.key_id) for g in self._others(name)) or self._stale(
            name, None, ca.issuing.key_id
        ):
            return self.publish(name)
        found = self._on_disk(self.path(name))
        assert found is not None
        der, crl, number = found
        next_update = crl.next_update_utc
        assert next_update is not None
        return PublishedCRL(der, number, crl.last_update_utc, next_update)

    def _stale(self, name: str, generation: int | None, key_id: bytes) -> bool:
        """True when the file is missing, half its validity is gone, the database has
        handed out a newer number (a publish that failed or lost), or another generation
        signed it (a switch)."""
        found = self._on_disk(self.path(name, generation))
        if found is None:
            return True
        _, crl, number = found
        next_update = crl.next_update_utc
        with self._ledger.store.unit(read_only=True) as unit:
            handed_out = unit.crl_numbers.current(self._counter(name, generation))
        try:
            signed_by = crl.extensions.get_extension_for_class(
                x509.AuthorityKeyIdentifier
            ).value.key_identifier
        except x509.ExtensionNotFound:
            signed_by = None
        return (
            next_update is None
            or next_update - self._clock() < self._validity / 2
            or number < handed_out
            or signed_by != key_id
        )

    def retired_files(self, name: str) -> list[Path]:
        """The CRL files of generations no longer published: removed by ``refresh_all``."""
        ca = self._registry.get(name)
        published = {g.number for g in self._others(name)}
        return [
            self.path(name, g.number)
            for g in ca.generations
            if g.number not in published and self.path(name, g.number).exists()
        ]

    def refresh_all(self) -> None:
        # The service CA's too: it lists revoked operator credentials.
        for name in self._registry.snapshot():
            self.current(name)
            for path in self.retired_files(name):
                # A retired generation is no longer published: its CRL goes with it.
                path.unlink(missing_ok=True)
