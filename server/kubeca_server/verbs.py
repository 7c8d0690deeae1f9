"""The operator's verbs on the server side: init, migrate, credentials, audit.

Each opens what it needs (the HSM, the store) through the composition root, does one
thing, and closes it again; the CLI maps their errors to exit codes.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from kubeca_client.authorities import SERVICE_CA
from kubeca_client.errors import ConfigError
from kubeca_client.files import PRIVATE, PUBLIC, atomic_write
from kubeca_client.keys import spki_der, spki_hash

from kubeca_server.app import close_ledger, open_backend, open_core, open_ledger, utc_now
from kubeca_server.ca import lifecycle, signing_key
from kubeca_server.ca.authority import CertificateAuthority
from kubeca_server.ca.lint import Linter
from kubeca_server.ca.service_tls import ensure_server_certificate, issue_operator_credentials
from kubeca_server.config import ServerConfig
from kubeca_server.ledger.audit import Entry
from kubeca_server.ledger.chain import ChainRow, Checkpoint
from kubeca_server.ledger.checkpoints import checkpoint
from kubeca_server.ledger.verify import InventoryEntry, Verification, check_mirror, verify
from kubeca_server.profiles import OPERATOR
from kubeca_server.store import CertificateRow, InventoryCursor, InventoryQuery, Store
from kubeca_server.store.changes import AddCertificate
from kubeca_server.store.factory import open_store

CHAIN_PAGE = 5000


def migrate(config: ServerConfig) -> str:
    store = open_store(config.store, migrate=True)
    store.close()
    return f"the store at {config.store.url} is at the current schema"


def run_init(config: ServerConfig) -> list[str]:
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    backend = open_backend(config)
    try:
        ledger = open_ledger(config, migrate=True)
        try:
            linter = Linter()
            report = lifecycle.initialize(config, backend, ledger, linter, utc_now)
            report.append(
                signing_key.initialize(
                    backend, ledger, config.service_account.key_algorithm, utc_now()
                )
            )
            authorities = lifecycle.load(config, backend, ledger.store, linter, utc_now)
            lifecycle.publish_bundles(config, authorities)
            service_ca = authorities[SERVICE_CA]
            report.append(ensure_server_certificate(config, service_ca))
            report.append(
                f"kubeca-service-ca: {service_ca.issuing.ca_cert_hash} (keep it off this "
                "machine: clients pin it, and 'audit verify --service-ca-hash' checks the "
                "ledger with it)"
            )
            return report
        finally:
            close_ledger(ledger)
    finally:
        backend.close()


def current_credential(directory: Path) -> x509.Certificate:
    """The operator certificate in ``directory`` (client.crt), to be renewed."""
    try:
        return x509.load_pem_x509_certificate((directory / "client.crt").read_bytes())
    except OSError as exc:
        raise ConfigError(f"--renew: cannot read {directory}/client.crt ({exc.strerror})") from None
    except ValueError:
        raise ConfigError(f"--renew: {directory}/client.crt is no PEM certificate") from None


def credential_name(certificate: x509.Certificate) -> str:
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        raise ConfigError("--renew: the certificate names no operator identity (no CN)")
    return str(names[0].value)


def _renewable(store: Store, service_ca: CertificateAuthority, old: x509.Certificate) -> str:
    """The serial of ``old`` if this service CA signed it and it is not revoked."""
    generation = service_ca.signer_of(old)
    try:
        if generation is None:
            raise ValueError("no generation of the service CA signed it")
        old.verify_directly_issued_by(generation.certificate)
    except (InvalidSignature, ValueError, TypeError):
        raise ConfigError("--renew: that certificate was not issued by this service CA") from None
    serial = format(old.serial_number, "x")
    with store.unit(read_only=True) as unit:
        row = unit.inventory.find(serial)
    if row is not None and row.revoked_at is not None:
        raise ConfigError(
            f"--renew: credential {serial} was revoked; issue a new one with --name and --out"
        )
    return serial


def issue_credentials(
    config: ServerConfig,
    name: str,
    out: Path,
    lifetime: timedelta,
    renews: x509.Certificate | None = None,
) -> Path:
    """Write an operator's client certificate, key and the service CA into ``out``.

    The certificate enters the inventory with its audit record, so ``kubeca revoke``
    can take it back. ``renews``: the credential being replaced, which must be this
    service CA's; it stays valid until it expires or is revoked."""
    core = open_core(config)
    try:
        service_ca = core.registry.service
        renewed_serial = None
        if renews is not None:
            renewed_serial = _renewable(core.ledger.store, service_ca, renews)
        credentials = issue_operator_credentials(name, service_ca, lifetime)
        certificate = credentials.certificate
        serial = format(certificate.serial_number, "x")
        pem = certificate.public_bytes(Encoding.PEM).decode()
        fingerprint = certificate.fingerprint(hashes.SHA256()).hex()
        row = CertificateRow(
            serial=serial,
            authority=SERVICE_CA,
            profile=OPERATOR.name,
            subject=certificate.subject.rfc4514_string(),
            sans=(),
            public_key_sha256=hashlib.sha256(spki_der(certificate)).hexdigest(),
            fingerprint_sha256=fingerprint,
            not_before=certificate.not_valid_before_utc,
            not_after=certificate.not_valid_after_utc,
            caller="kubeca-server credentials issue",
            request_fingerprint=f"credentials:{serial}",
            certificate_pem=pem,
            issuer_key_id=service_ca.issuing.key_id_hex,
        )
        core.ledger.commit(
            Entry(
                "credentials.issued",
                {
                    "outcome": "issued",
                    "identity": name,
                    "authority": SERVICE_CA,
                    "profile": OPERATOR.name,
                    "serial": serial,
                    "fingerprint_sha256": fingerprint,
                    "not_after": certificate.not_valid_after_utc.isoformat(),
                    "has_grant": name in config.grants,
                    "renews": renewed_serial,
                },
                "warning",
                AddCertificate(row),
            )
        )
    finally:
        core.close()
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(out / "client.key", credentials.key_pem, PRIVATE)
    atomic_write(out / "client.crt", pem.encode(), PUBLIC)
    atomic_write(out / "ca.crt", credentials.ca_pem, PUBLIC)
    return out


def checkpoint_now(config: ServerConfig) -> Checkpoint | None:
    core = open_core(config)
    try:
        service = core.registry.service.issuing
        return checkpoint(core.ledger, service.signer.sign_bytes, utc_now())
    finally:
        core.close()


def verify_audit(config: ServerConfig, service_ca_hash: str | None) -> Verification:
    """Walk the chain, its checkpoints, the inventory and the mirror; needs the store,
    not the HSM.

    The checkpoints' signing key is trusted only as far as its certificate: read from
    the very store being checked unless ``service_ca_hash`` (which init prints, to be
    kept elsewhere) pins it.
    """
    store = open_store(config.store, read_only=True)
    try:
        with store.unit(read_only=True) as unit:
            rows: list[ChainRow] = []
            while batch := unit.audit.rows(rows[-1].seq if rows else 0, CHAIN_PAGE):
                rows.extend(batch)
            checkpoints = unit.checkpoints.all()
            generations = [g for g in unit.generations.all() if g.authority == SERVICE_CA]
            inventory: list[CertificateRow] = []
            cursor = None
            while page := unit.inventory.page(InventoryQuery(), cursor, CHAIN_PAGE):
                inventory.extend(page)
                cursor = InventoryCursor(page[-1].not_after, page[-1].serial)
    finally:
        store.close()
    if not generations:
        raise ConfigError(f"the store at {config.store.url} holds no service CA; run init")
    service_ca = x509.load_pem_x509_certificate(generations[0].certificate_pem.encode())
    entries = [
        InventoryEntry(
            r.serial,
            r.audit_seq,
            r.fingerprint_sha256,
            r.revoked_at is not None,
            _pem_fingerprint(r.certificate_pem),
        )
        for r in inventory
    ]
    result = verify(rows, checkpoints, entries, service_ca.public_key())  # type: ignore[arg-type]
    check_mirror(config.audit_log, rows, result)
    anchor = spki_hash(service_ca)
    if service_ca_hash is not None and anchor != service_ca_hash:
        result.problems.insert(
            0,
            f"the service CA in the store is not the one pinned: expected "
            f"{service_ca_hash}, found {anchor} (checkpoints cannot be trusted)",
        )
    result.anchor_pinned = service_ca_hash is not None
    return result


def _pem_fingerprint(pem: str) -> str:
    try:
        certificate = x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        return "unreadable"
    return certificate.fingerprint(hashes.SHA256()).hex()
