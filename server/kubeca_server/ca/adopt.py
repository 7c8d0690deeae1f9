"""Adopting an existing cluster's PKI: its CA keys go into the token, once.

Everything is read and checked before anything is written: each certificate is a CA
with keyCertSign, each key is the certificate's, the authority has no generation yet
and the token no key under its label. Only then is each key created in the token
(sensitive, non-extractable, sign-only) and its generation recorded with provenance
``imported``: the token itself then says the key is not ALWAYS_SENSITIVE, and kubeca
never claims otherwise. The key files are never copied; the operator is told which
ones to destroy, and that disks and backups keep copies, so rotate soon after.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)
from kubeca_client.authorities import ETCD_CA, FRONT_PROXY_CA, KUBERNETES_CA
from kubeca_client.errors import InvalidArgument
from kubeca_client.keys import spki_der

from kubeca_server.ca.lifecycle import generation_rows, key_label
from kubeca_server.keys import CAPrivateKey, KeyBackend
from kubeca_server.ledger.audit import Entry, Ledger
from kubeca_server.store.changes import AddGeneration
from kubeca_server.store.records import GenerationRow, GenerationState, KeyKind, Provenance

SERVICE_ACCOUNT = "service-account"
MAX_FILE_BYTES = 64 * 1024
# kubeadm's pki directory: the certificate and key of each CA, by authority.
KUBEADM_FILES: Mapping[str, tuple[str, str]] = {
    KUBERNETES_CA: ("ca.crt", "ca.key"),
    ETCD_CA: ("etcd/ca.crt", "etcd/ca.key"),
    FRONT_PROXY_CA: ("front-proxy-ca.crt", "front-proxy-ca.key"),
}
SA_FILES = ("sa.pub", "sa.key")


@dataclass(frozen=True)
class Candidate:
    """One checked key, ready to go into the token."""

    authority: str
    key: CAPrivateKey
    certificate: x509.Certificate | None  # None for a token-signing key (sa.key)
    key_file: Path
    cert_file: Path


@dataclass(frozen=True)
class ImportReport:
    lines: list[str]
    destroy: list[Path]


def _read(path: Path, what: str) -> bytes:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise InvalidArgument(f"{path}: larger than {MAX_FILE_BYTES} bytes; not a {what}")
        return path.read_bytes()
    except FileNotFoundError:
        raise InvalidArgument(f"{path}: no such file") from None
    except OSError as exc:
        raise InvalidArgument(f"{path}: cannot be read ({exc.strerror})") from None


def _load_key(path: Path, passphrase: bytes | None) -> CAPrivateKey:
    data = _read(path, "private key")
    try:
        key = load_pem_private_key(data, password=passphrase)
    except TypeError:
        if passphrase is None:
            raise InvalidArgument(
                f"{path}: the key is encrypted; name its passphrase with --passphrase-file "
                "or --passphrase-env"
            ) from None
        raise InvalidArgument(
            f"{path}: the key is not encrypted, but a passphrase was given"
        ) from None
    except ValueError:
        raise InvalidArgument(
            f"{path}: not a PEM private key (or the passphrase is wrong)"
        ) from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise InvalidArgument(f"{path}: an RSA key of {key.key_size} bits; at least 2048")
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name in ("secp256r1", "secp384r1"):
        return key
    raise InvalidArgument(f"{path}: only RSA and ECDSA P-256/P-384 keys can be imported")


def _load_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_read(path, "certificate"))
    except ValueError:
        raise InvalidArgument(f"{path}: not a PEM certificate") from None


def check_ca_certificate(path: Path, certificate: x509.Certificate, now: datetime) -> None:
    """A CA as kubeadm makes one: CA:true and keyCertSign (cRLSign is not required:
    kubeadm leaves it out), and not expired."""
    try:
        basic = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise InvalidArgument(f"{path}: not a CA certificate (no BasicConstraints)") from None
    if not basic.ca:
        raise InvalidArgument(f"{path}: not a CA certificate (BasicConstraints CA:false)")
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and not usage.key_cert_sign:
        raise InvalidArgument(f"{path}: the CA certificate's key usage lacks keyCertSign")
    if certificate.not_valid_after_utc <= now:
        raise InvalidArgument(
            f"{path}: the CA certificate expired at {certificate.not_valid_after_utc.isoformat()}"
        )


def check_pair(
    authority: str,
    cert_file: Path,
    key_file: Path,
    passphrase: bytes | None,
    now: datetime,
) -> Candidate:
    certificate = _load_certificate(cert_file)
    check_ca_certificate(cert_file, certificate, now)
    key = _load_key(key_file, passphrase)
    if spki_der(certificate) != spki_der(key):
        raise InvalidArgument(f"{key_file}: the key does not belong to {cert_file}")
    return Candidate(authority, key, certificate, key_file, cert_file)


def check_service_account(pub_file: Path, key_file: Path, passphrase: bytes | None) -> Candidate:
    key = _load_key(key_file, passphrase)
    try:
        stated = load_pem_public_key(_read(pub_file, "public key"))
    except ValueError:
        raise InvalidArgument(f"{pub_file}: not a PEM public key") from None
    der = stated.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if der != spki_der(key):
        raise InvalidArgument(f"{key_file}: the key does not belong to {pub_file}")
    return Candidate(SERVICE_ACCOUNT, key, None, key_file, pub_file)


def kubeadm_candidates(
    directory: Path, passphrase: bytes | None, known: Sequence[str], now: datetime
) -> tuple[list[Candidate], list[str]]:
    """Every CA of a kubeadm pki directory, checked; and notes on what was skipped.
    Refuses (listing them) when any expected file is missing."""
    if not directory.is_dir():
        raise InvalidArgument(f"--from: {directory} is not a directory")
    wanted = [name for pair in KUBEADM_FILES.values() for name in pair]
    service_account = SERVICE_ACCOUNT in known
    if service_account:
        wanted.extend(SA_FILES)
    missing = [name for name in wanted if not (directory / name).is_file()]
    if missing:
        raise InvalidArgument(
            f"--from: {directory} is not a whole kubeadm pki directory; missing: "
            + ", ".join(missing)
            + " (nothing was imported)"
        )
    candidates = [
        check_pair(name, directory / cert, directory / key, passphrase, now)
        for name, (cert, key) in KUBEADM_FILES.items()
    ]
    notes = []
    if service_account:
        candidates.append(
            check_service_account(directory / SA_FILES[0], directory / SA_FILES[1], passphrase)
        )
    elif (directory / "sa.key").exists():
        notes.append(
            "service-account: sa.key skipped: this kubeca has no service-account authority "
            "to import it into (it stays where it is; keep it protected)"
        )
    return candidates, notes


def _fingerprint(candidate: Candidate) -> str:
    if candidate.certificate is not None:
        return hashlib.sha256(candidate.certificate.public_bytes(Encoding.DER)).hexdigest()
    return hashlib.sha256(spki_der(candidate.key)).hexdigest()


def import_candidates(
    candidates: Sequence[Candidate],
    backend: KeyBackend,
    ledger: Ledger,
    clock: Callable[[], datetime],
) -> list[str]:
    """Put each checked key into the token and record its generation; refuses, before
    writing anything, when an authority already has a key."""
    existing = generation_rows(ledger.store)
    for candidate in candidates:
        if existing.get(candidate.authority):
            raise InvalidArgument(
                f"{candidate.authority} already has a key (generation "
                f"{existing[candidate.authority][-1].generation}); an authority's key is "
                "never replaced by an import (rotate it instead); nothing was imported"
            )
        label = key_label(candidate.authority, 1)
        if backend.find_key(label) is not None:
            raise InvalidArgument(
                f"{candidate.authority}: the token already holds a key labelled {label!r}; "
                "nothing was imported"
            )
    lines = []
    for candidate in candidates:
        label = key_label(candidate.authority, 1)
        held = backend.import_key(label, candidate.key)
        facts = backend.key_facts(label)
        public_pem = (
            held.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
        )
        certificate = candidate.certificate
        row = GenerationRow(
            candidate.authority,
            1,
            label,
            certificate.public_bytes(Encoding.PEM).decode() if certificate else "",
            GenerationState.ISSUING,
            Provenance.IMPORTED,
            clock(),
            KeyKind.CA if certificate else KeyKind.JWT,
            public_pem,
        )
        record: dict[str, object] = {
            "authority": candidate.authority,
            "generation": 1,
            "key_label": label,
            "provenance": Provenance.IMPORTED.value,
            "key_file": str(candidate.key_file),
            "certificate_file": str(candidate.cert_file),
            "sha256": _fingerprint(candidate),
        }
        if facts is not None:
            record.update(
                sensitive=facts.sensitive,
                extractable=facts.extractable,
                always_sensitive=facts.always_sensitive,
                never_extractable=facts.never_extractable,
                local=facts.local,
            )
        if certificate is not None:
            record.update(
                serial=format(certificate.serial_number, "x"),
                subject=certificate.subject.rfc4514_string(),
                not_after=certificate.not_valid_after_utc.isoformat(),
            )
        ledger.commit(Entry("ca.imported", record, "warning", change=AddGeneration(row)))
        lines.append(
            f"{candidate.authority}: imported {candidate.key_file} into the HSM as {label!r} "
            "(sensitive, non-extractable, sign-only; provenance: imported, so not "
            "ALWAYS_SENSITIVE)"
        )
    return lines


def destroy_advice(candidates: Sequence[Candidate]) -> list[str]:
    files = " ".join(str(c.key_file) for c in candidates)
    return [
        "kubeca copied no key file anywhere. Destroy the originals now, on every "
        "control-plane node that has them:",
        f"  shred -u {files}",
        "Disks, backups and snapshots keep copies of these keys whatever you do: rotate "
        "each imported CA soon (kubeca-server ca rotate begin --authority NAME).",
    ]
