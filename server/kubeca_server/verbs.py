"""The operator's verbs on the server side: init, migrate, credentials, audit.

Each opens what it needs (the HSM, the store) through the composition root, does one
thing, and closes it again; the CLI maps their errors to exit codes.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from kubeca_client.authorities import SERVICE_ACCOUNT_KEY, SERVICE_CA
from kubeca_client.errors import ConfigError, InvalidArgument, KubecaError
from kubeca_client.files import PRIVATE, PUBLIC, atomic_write
from kubeca_client.keys import spki_der, spki_hash
from kubeca_client.text import clip

from kubeca_server.app import close_ledger, open_backend, open_core, open_ledger, utc_now
from kubeca_server.ca import adopt, lifecycle, signing_key
from kubeca_server.ca.authority import CertificateAuthority
from kubeca_server.ca.lint import Linter
from kubeca_server.ca.rotation import Rotation, key_id_hex
from kubeca_server.ca.service_tls import ensure_server_certificate, issue_operator_credentials
from kubeca_server.config import ServerConfig
from kubeca_server.keys import KeyBackend
from kubeca_server.ledger.audit import Entry, Ledger
from kubeca_server.ledger.chain import ChainRow, Checkpoint
from kubeca_server.ledger.checkpoints import checkpoint
from kubeca_server.ledger.verify import InventoryEntry, Verification, check_mirror, verify
from kubeca_server.maintenance import EXPIRY_WARNING
from kubeca_server.profiles import OPERATOR
from kubeca_server.store import CertificateRow, InventoryCursor, InventoryQuery, Store
from kubeca_server.store.changes import AddCertificate
from kubeca_server.store.factory import open_store
from kubeca_server.store.records import GenerationRow, GenerationState, KeyKind
from kubeca_server.store.roles import UnitOfWork

CHAIN_PAGE = 5000


def migrate(config: ServerConfig) -> str:
    store = open_store(config.store, migrate=True)
    store.close()
    return f"the store at {config.store.display} is at the current schema"


def copy_store_from(config: ServerConfig, source: ServerConfig) -> list[str]:
    """Copy the store ``source`` names into the (migrated, empty) one ``config`` names,
    then verify the copy: the chain, its checkpoints and the inventory, as 'audit
    verify' does, with the destination's own audit mirror rebuilt from it."""
    from kubeca_server.store.copy import copy_store

    if source.store.url == config.store.url:
        raise ConfigError("the source and the destination are the same store")
    old = open_store(source.store, read_only=True)
    try:
        new = open_store(config.store, migrate=True)
        try:
            copied = copy_store(old, new)
        finally:
            new.close()
    finally:
        old.close()
    close_ledger(open_ledger(config))  # writes the destination's mirror from its chain
    result = verify_audit(config, None)
    report = [
        f"copied {copied.records} audit records, {copied.certificates} certificates, "
        f"{copied.tokens} bootstrap tokens, {copied.checkpoints} checkpoints and "
        f"{copied.generations} CA generations from {source.store.display} into "
        f"{config.store.display}",
        f"chain head: {copied.head_hash or '(empty chain)'}",
    ]
    if result.problems:
        raise ConfigError("the copy does not verify: " + "; ".join(result.problems[:3]))
    report.append(
        f"the copy verifies: {result.records} records, {result.checkpoints} signed "
        f"checkpoints, {result.certificates} certificates"
    )
    return report


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
        raise ConfigError(f"the store at {config.store.display} holds no service CA; run init")
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


# --- CA lifecycle: import, rotate, status -------------------------------------------------


def _known_authorities(config: ServerConfig, ledger: Ledger) -> list[str]:
    """The authorities this kubeca serves: its config's, the service-account key (so a
    kubeadm sa.key is imported, and tokens it signed stay valid), and any the store holds
    generations of."""
    return sorted(
        {*config.authorities, SERVICE_ACCOUNT_KEY} | set(lifecycle.generation_rows(ledger.store))
    )


def import_authorities(
    config: ServerConfig,
    *,
    directory: Path | None,
    authority: str | None,
    cert: Path | None,
    key: Path | None,
    passphrase: bytes | None,
) -> list[str]:
    """``ca import``: check everything, then put each key into the token."""
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    backend = open_backend(config)
    try:
        ledger = open_ledger(config, migrate=True)
        try:
            known = _known_authorities(config, ledger)
            now = utc_now()
            notes: list[str] = []
            try:
                if directory is not None:
                    candidates, notes = adopt.kubeadm_candidates(directory, passphrase, known, now)
                else:
                    assert authority is not None and cert is not None and key is not None
                    if authority not in known:
                        raise InvalidArgument(
                            f"--authority: no authority named {authority[:64]!r} (known: "
                            f"{', '.join(known)})"
                        )
                    candidates = [
                        adopt.check_service_account(cert, key, passphrase)
                        if authority == adopt.SERVICE_ACCOUNT
                        else adopt.check_pair(authority, cert, key, passphrase, now)
                    ]
                lines = adopt.import_candidates(candidates, backend, ledger, utc_now)
            except KubecaError as exc:
                source = str(directory) if directory is not None else f"{cert} {key}"
                _record_refusal(
                    ledger,
                    "ca.import.refused",
                    {"source": clip(source, 256), "authority": clip(authority or "", 64)},
                    exc,
                )
                raise
        finally:
            close_ledger(ledger)
    finally:
        backend.close()
    return [
        *lines,
        *notes,
        f"next: 'kubeca-server --config {config.path} init' creates what is still missing "
        "(the service CA) and keeps what was imported",
        *adopt.destroy_advice(candidates),
    ]


def _record_refusal(
    ledger: Ledger, event: str, fields: dict[str, object], exc: KubecaError
) -> None:
    """An operator's refused lifecycle step is audited like a refused request: the
    reason (bounded), never the key material or a passphrase."""
    ledger.commit(
        Entry(
            event,
            {
                **fields,
                "outcome": "refused",
                "status": exc.status,
                "reason": clip(exc.message, 300),
            },
            "warning",
        )
    )


def rotate(config: ServerConfig, step: str, authority: str, force: bool = False) -> str:
    """``ca rotate begin|switch|finish``: one step, audited; running workers follow."""
    backend = open_backend(config)
    try:
        ledger = open_ledger(config)
        try:
            rotation = Rotation(config, backend, ledger, Linter(), utc_now)
            try:
                if step == "begin":
                    line = rotation.begin(authority)
                elif step == "switch":
                    line = rotation.switch(authority)
                else:
                    line = rotation.finish(authority, force)
            except KubecaError as exc:
                _record_refusal(
                    ledger,
                    "ca.rotation.refused",
                    {"step": step, "authority": clip(authority, 64), "forced": force},
                    exc,
                )
                raise
            if authority in config.authorities:
                authorities = lifecycle.load(config, backend, ledger.store, Linter(), utc_now)
                lifecycle.publish_bundles(config, authorities)
                if authority == SERVICE_CA:
                    # The server's own TLS certificate follows the service CA's issuing
                    # generation; listeners read it (and the bundle) when they start.
                    tls = ensure_server_certificate(config, authorities[SERVICE_CA])
                    line += f"\n{tls}; restart the servers to serve it"
            return line
        finally:
            close_ledger(ledger)
    finally:
        backend.close()


def ca_status(config: ServerConfig) -> list[str]:
    """``ca status``: each authority's generations, which issues, what each signed that
    is still valid, and when each expires (a warning from a year before)."""
    backend = open_backend(config)
    try:
        store = open_store(config.store, read_only=True)
        try:
            rows = lifecycle.generation_rows(store)
            now = utc_now()
            lines: list[str] = []
            with store.unit(read_only=True) as unit:
                for name in sorted(rows):
                    stage = (
                        "rotation under way"
                        if any(r.state is GenerationState.TRUSTED for r in rows[name])
                        else "steady"
                    )
                    lines.append(f"{name} ({stage}):")
                    for row in rows[name]:
                        lines.append("  " + generation_line(row, unit, backend, now))
        finally:
            store.close()
    finally:
        backend.close()
    return lines


def generation_line(
    row: GenerationRow, unit: UnitOfWork, backend: KeyBackend, now: datetime
) -> str:
    facts = backend.key_facts(row.key_label)
    if facts is None:
        key = "key MISSING from the token"
    elif facts.generated_inside:
        key = "key generated in the HSM"
    else:
        key = "key imported (not always sensitive: copies may exist outside the HSM)"
    text = f"generation {row.generation}: {row.state.value}, {key}"
    if row.kind is KeyKind.CA:
        certificate = x509.load_pem_x509_certificate(row.certificate_pem.encode())
        not_after = certificate.not_valid_after_utc
        signed = unit.inventory.count_unexpired(row.authority, key_id_hex(row), now)
        text += f", {sum(signed.values())} unexpired leaves, expires {not_after:%Y-%m-%d}"
        if row.state is not GenerationState.RETIRED and not_after - now < EXPIRY_WARNING:
            text += (
                f" WARNING: expires in {(not_after - now).days} days; rotate it "
                f"(kubeca-server ca rotate begin --authority {row.authority})"
            )
        if row.cross_certificate_pem:
            text += ", cross-signed by the generation before"
    return text
