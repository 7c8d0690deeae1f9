"""The machinery behind whole-node layouts: plan, issue everything, then write.

Every certificate a command needs is issued into memory first; files are written only
when all of them were issued, each atomically (temp file + rename), keys 0600 before
their certificates, key directories 0700. So a refusal or an unreachable service
leaves the directory exactly as it was, and the report names what is missing.

A small manifest (``.kubeca-layout.json``) records how each certificate was requested
(profile, parameters, lifetime, server URL), so ``renew`` can ask for the same again
and a re-run can tell a current certificate from one whose inputs changed.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from kubeca_client.client import CACertificate, Client, IssuedCertificate
from kubeca_client.errors import InvalidArgument, KubecaError, PermissionDenied
from kubeca_client.files import PRIVATE, PUBLIC, atomic_write
from kubeca_client.keys import PrivateKey, spki_der
from kubeca_client.kubeconfig import Kubeconfig, decode_field, read_kubeconfig
from kubeca_client.layout import (
    CA_BY_AUTHORITY,
    CA_FILES,
    MANIFEST,
    SUPER_ADMIN,
    KubeconfigFile,
    LeafFile,
)

KEY_DIR_MODE = 0o700
SUPER_ADMIN_NOTE = (
    "kubeadm 1.29+ expects super-admin.conf in External CA mode; an operator whose grant "
    "names super-admin, on a server that enables it, can add it later with the same command"
)


class LayoutError(KubecaError):
    """Some certificates could not be obtained; nothing was written. The exit code is
    the first failure's, so a refusal exits as it would from `kubeca issue`."""

    def __init__(self, message: str, first: KubecaError | None = None) -> None:
        super().__init__(message)
        if first is not None:
            self.status = first.status
            self.exit_code = first.exit_code


@dataclass(frozen=True)
class Slot:
    """One certificate a layout needs, and where it lives."""

    name: str
    profile: str
    authority: str
    parameters: Mapping[str, str]
    leaf: LeafFile | None = None
    kubeconfig: KubeconfigFile | None = None
    server: str = ""  # kubeconfigs only
    user: str = ""  # kubeconfigs only
    lifetime_seconds: int = 0

    def record(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"profile": self.profile, "parameters": dict(self.parameters)}
        if self.lifetime_seconds:
            entry["lifetime_seconds"] = self.lifetime_seconds
        if self.kubeconfig is not None:
            entry["server"] = self.server
        return entry

    def read(self, root: Path) -> tuple[x509.Certificate, PrivateKey] | None:
        """The certificate and key on disk, or None when absent or unreadable."""
        try:
            if self.leaf is not None:
                cert_pem = self.leaf.cert_path(root).read_bytes()
                key_pem: bytes | None = self.leaf.key_path(root).read_bytes()
            else:
                assert self.kubeconfig is not None
                fields = read_kubeconfig(self.kubeconfig.path(root))
                cert = decode_field(fields, "client-certificate-data", self.kubeconfig.path(root))
                key_pem = decode_field(fields, "client-key-data", self.kubeconfig.path(root))
                if cert is None:
                    return None
                cert_pem = cert
            if key_pem is None:
                return None
            certificate = x509.load_pem_x509_certificate(cert_pem)
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (OSError, ValueError, TypeError, InvalidArgument):
            return None
        if not isinstance(key, PrivateKey):
            return None
        return certificate, key

    def stale_trust(self, root: Path, bundle_pem: str) -> bool:
        """True for a kubeconfig whose certificate-authority-data is not ``bundle_pem``
        (a CA rotation began or finished): rewriting it is how the bundle reaches it."""
        if self.kubeconfig is None or not bundle_pem:
            return False
        path = self.kubeconfig.path(root)
        try:
            data = decode_field(read_kubeconfig(path), "certificate-authority-data", path)
        except (OSError, ValueError, InvalidArgument):
            return True
        return data != bundle_pem.encode()

    def writes(
        self, root: Path, issued: IssuedCertificate, key_pem: bytes, new_key: bool
    ) -> list[Write]:
        """Key first (when new), then certificate: a certificate never precedes its key."""
        if self.leaf is not None:
            cert = Write(self.leaf.cert_path(root), issued.certificate_pem.encode(), PUBLIC)
            if not new_key:
                return [cert]
            return [Write(self.leaf.key_path(root), key_pem, PRIVATE), cert]
        assert self.kubeconfig is not None
        config = Kubeconfig(
            server=self.server,
            user=self.user,
            ca_pem=issued.trust_pem.encode(),
            cert_pem=issued.certificate_pem.encode(),
            key_pem=key_pem,
        )
        return [Write(self.kubeconfig.path(root), config.render(), PRIVATE)]


@dataclass(frozen=True)
class Write:
    path: Path
    data: bytes
    mode: int


@dataclass
class Report:
    issued: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)

    def lines(self, root: Path) -> list[str]:
        out = [f"issued    {name}" for name in self.issued]
        out += [f"unchanged {name}" for name in self.unchanged]
        out += [f"skipped   {name}: {why}" for name, why in self.skipped]
        if not self.written:
            out.append(f"{root} is complete and valid; nothing changed")
        else:
            out.append(f"wrote {len(self.written)} files under {root}")
        return out


@dataclass(frozen=True)
class Pending:
    slot: Slot
    csr: bytes
    key_pem: bytes
    new_key: bool  # False when the key already sits on disk and stays as it is
    force_new: bool = False  # a renewal wants a new certificate, even for the same key


def prepare_root(root: Path) -> None:
    """Refuse a directory kubeadm would not treat as External CA, or one we cannot write."""
    if root.exists() and not root.is_dir():
        raise InvalidArgument(f"--dir: {root} exists and is not a directory")
    # Try for real, before anything is issued: permission bits say nothing for root,
    # and a read-only mount or a full disk only shows when writing.
    try:
        root.mkdir(parents=True, exist_ok=True, mode=KEY_DIR_MODE)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as exc:
        raise InvalidArgument(f"--dir: {root} is not writable ({exc.strerror})") from None
    for ca in CA_FILES:
        key = root / "pki" / f"{ca.base}.key"
        if key.exists():
            raise InvalidArgument(
                f"{key} exists: kubeadm would use that CA key instead of the external CA. "
                "Move it off this machine (kubeca keeps CA keys in its HSM), then re-run"
            )


def _ensure_dirs(root: Path, paths: Iterable[Path]) -> None:
    root.mkdir(parents=True, exist_ok=True, mode=KEY_DIR_MODE)
    for directory in sorted({p.parent for p in paths}):
        directory.mkdir(parents=True, exist_ok=True, mode=KEY_DIR_MODE)
        if directory != root:
            directory.chmod(KEY_DIR_MODE)


def read_manifest(root: Path) -> dict[str, dict[str, Any]]:
    path = root / MANIFEST
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        entries = data["certificates"]
        if not isinstance(entries, dict):
            raise TypeError("certificates is not an object")
        for name, entry in entries.items():
            parameters = entry.get("parameters") if isinstance(entry, dict) else None
            if not isinstance(parameters, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in parameters.items()
            ):
                raise TypeError(f"the entry for {name} is not a profile and its parameters")
            if not isinstance(entry.get("lifetime_seconds", 0), int):
                raise TypeError(f"the entry for {name} has a lifetime that is not a number")
        return entries
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InvalidArgument(f"{path} is damaged ({exc}); remove it and re-run") from None


def _manifest_write(root: Path, entries: Mapping[str, Any]) -> Write:
    body = {"version": 1, "certificates": dict(sorted(entries.items()))}
    return Write(root / MANIFEST, (json.dumps(body, indent=2) + "\n").encode(), PUBLIC)


def renewal_due(certificate: x509.Certificate, now: datetime, within: timedelta | None) -> bool:
    """Inside the renewal window: ``within`` of expiry, or the last third of its life."""
    not_after = certificate.not_valid_after_utc
    if within is None:
        within = (not_after - certificate.not_valid_before_utc) / 3
    return now >= not_after - within


def signed_by_old_generation(certificate: x509.Certificate, issuing_key_id: str) -> bool:
    """True when ``certificate`` names an issuer key that no longer issues (its CA was
    rotated): such a leaf is renewed whatever its expiry, so the old CA can be retired."""
    if not issuing_key_id:
        return False
    try:
        aki = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        return False
    return aki.key_identifier is not None and aki.key_identifier.hex() != issuing_key_id


def valid_pair(
    pair: tuple[x509.Certificate, PrivateKey] | None, ca: x509.Certificate
) -> x509.Certificate | None:
    if pair is None:
        return None
    certificate, key = pair
    if spki_der(certificate) != spki_der(key):
        return None
    try:
        certificate.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):
        return None
    return certificate


def issue_all(
    client: Client, pending: Sequence[Pending], report: Report
) -> list[tuple[Pending, IssuedCertificate]]:
    """Issue everything or raise LayoutError naming each certificate not obtained."""
    results: list[tuple[Pending, IssuedCertificate]] = []
    failures: list[str] = []
    first: KubecaError | None = None
    for item in pending:
        try:
            issued = client.issue_certificate(
                item.slot.profile,
                item.csr,
                item.slot.parameters,
                item.slot.lifetime_seconds,
                force_new=item.force_new,
            )
        except PermissionDenied as exc:
            if item.slot.kubeconfig is SUPER_ADMIN:
                report.skipped.append((item.slot.name, f"{exc.message}; {SUPER_ADMIN_NOTE}"))
                continue
            failures.append(f"{item.slot.name}: {exc.message}")
            first = first or exc
        except KubecaError as exc:
            failures.append(f"{item.slot.name}: {exc.message}")
            first = first or exc
            if exc.status in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
                break  # the rest would wait out the same deadline, one by one
        else:
            results.append((item, issued))
    if failures:
        missing = [
            p.slot.name for p in pending if p.slot.name not in {r[0].slot.name for r in results}
        ]
        raise LayoutError(
            "nothing was written; not obtained: "
            + "; ".join(failures)
            + (f" (missing: {', '.join(missing)})" if missing else ""),
            first,
        )
    return results


def _ca_writes(
    root: Path, cas: Mapping[str, CACertificate], authorities: Iterable[str]
) -> list[Write]:
    writes = []
    for authority in sorted(set(authorities)):
        path = root / "pki" / f"{CA_BY_AUTHORITY[authority].base}.crt"
        pem = cas[authority].trust_pem.encode()
        if not path.exists() or path.read_bytes() != pem:
            writes.append(Write(path, pem, PUBLIC))
    return writes


def _commit(root: Path, writes: Sequence[Write], report: Report) -> None:
    _ensure_dirs(root, [w.path for w in writes])
    for write in writes:
        atomic_write(write.path, write.data, write.mode)
        report.written.append(write.path)


def finish(
    client: Client,
    root: Path,
    cas: Mapping[str, CACertificate],
    slots: Sequence[Slot],
    pending: Sequence[Pending],
    manifest: Mapping[str, Any],
    report: Report,
    extra: Sequence[Write] = (),
) -> None:
    """Issue every pending certificate, then write them all with the CAs and manifest."""
    results = issue_all(client, pending, report)
    writes = _ca_writes(root, cas, [s.authority for s in slots])
    entries = dict(manifest)
    for item, issued in results:
        writes.extend(item.slot.writes(root, issued, item.key_pem, item.new_key))
        entries[item.slot.name] = item.slot.record()
        report.issued.append(item.slot.name)
    writes.extend(extra)
    if writes:
        writes.append(_manifest_write(root, entries))
    _commit(root, writes, report)
