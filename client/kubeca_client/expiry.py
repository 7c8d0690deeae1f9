"""`kubeca check-expiration`: kubeadm's two tables, for a layout written by kubeca or kubeadm."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509

from kubeca_client.kubeconfig import decode_field, read_kubeconfig
from kubeca_client.layout import (
    CA_BY_AUTHORITY,
    CA_FILES,
    CHECK_EXPIRATION_NAMES,
    CONTROL_PLANE_KUBECONFIGS,
    CONTROL_PLANE_LEAVES,
    WORKER_KUBELET_CONF,
    WORKER_SERVING,
)


@dataclass(frozen=True)
class Row:
    name: str
    expires: str  # ISO 8601, empty when missing
    residual_seconds: int
    residual: str
    authority: str  # kubeadm's name: ca, etcd-ca, front-proxy-ca
    externally_managed: bool
    missing: bool = False
    # For a CA file: every certificate in it (a rotation's bundle holds old and new),
    # as (hex SubjectKeyIdentifier, NotAfter ISO 8601), in file order.
    bundle: tuple[tuple[str, str], ...] = ()


def short_duration(delta: timedelta) -> str:
    """kubeadm's duration.ShortHumanDuration, which check-expiration prints."""
    seconds = int(delta.total_seconds())
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    if seconds < 60:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    return f"{hours // 24 // 365}y"


def _load(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def _load_bundle(path: Path) -> tuple[tuple[str, str], ...]:
    try:
        certificates = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError):
        return ()
    return tuple((_ski(c), c.not_valid_after_utc.isoformat()) for c in certificates)


def _ski(certificate: x509.Certificate) -> str:
    try:
        return certificate.extensions.get_extension_for_class(
            x509.SubjectKeyIdentifier
        ).value.digest.hex()
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(certificate.public_key()).digest.hex()


def _kubeconfig_cert(path: Path) -> x509.Certificate | None:
    if not path.exists():
        return None
    data = decode_field(read_kubeconfig(path), "client-certificate-data", path)
    if data is None:
        return None
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        return None


def _row(
    name: str, cert: x509.Certificate | None, authority: str, external: bool, now: datetime
) -> Row:
    if cert is None:
        return Row(name, "", 0, "", authority, external, missing=True)
    left = cert.not_valid_after_utc - now
    return Row(
        name,
        cert.not_valid_after_utc.isoformat(),
        int(left.total_seconds()),
        short_duration(left),
        authority,
        external,
    )


def scan(root: Path, now: datetime) -> tuple[list[Row], list[Row]]:
    """(certificates, certificate authorities) as kubeadm lists them."""
    external = {ca.authority: not (root / "pki" / f"{ca.base}.key").exists() for ca in CA_FILES}
    found: dict[str, tuple[x509.Certificate | None, str]] = {}
    for leaf in CONTROL_PLANE_LEAVES:
        found[leaf.name] = (_load(leaf.cert_path(root)), leaf.authority)
    for conf in CONTROL_PLANE_KUBECONFIGS:
        found[conf.name] = (_kubeconfig_cert(conf.path(root)), conf.authority)
    certificates = [
        _row(
            name,
            found[name][0],
            CA_BY_AUTHORITY[found[name][1]].name,
            external[found[name][1]],
            now,
        )
        for name in CHECK_EXPIRATION_NAMES
    ]
    # A worker layout holds neither of kubeadm's lists; show what it does hold.
    if all(r.missing for r in certificates):
        certificates = [
            _row(
                WORKER_KUBELET_CONF.name,
                _kubeconfig_cert(WORKER_KUBELET_CONF.path(root)),
                "ca",
                external["kubernetes-ca"],
                now,
            ),
            _row(
                WORKER_SERVING.name,
                _load(WORKER_SERVING.cert_path(root)),
                "ca",
                external["kubernetes-ca"],
                now,
            ),
        ]
    authorities = [
        replace(
            _row(ca.name, _load(root / "pki" / f"{ca.base}.crt"), "", external[ca.authority], now),
            bundle=_load_bundle(root / "pki" / f"{ca.base}.crt"),
        )
        for ca in CA_FILES
    ]
    return certificates, [a for a in authorities if not a.missing]


def _when(row: Row) -> str:
    return datetime.fromisoformat(row.expires).strftime("%b %d, %Y %H:%M UTC")


def render_text(certificates: list[Row], authorities: list[Row]) -> str:
    yes_no = {True: "yes", False: "no"}
    lines = [
        f"{'CERTIFICATE':<26}{'EXPIRES':<25}{'RESIDUAL TIME':<16}"
        f"{'CERTIFICATE AUTHORITY':<24}EXTERNALLY MANAGED"
    ]
    for r in certificates:
        if r.missing:
            lines.append(f"!MISSING! {r.name}")
            continue
        lines.append(
            f"{r.name:<26}{_when(r):<25}{r.residual:<16}{r.authority:<24}"
            f"{yes_no[r.externally_managed]}"
        )
    lines.append("")
    lines.append(
        f"{'CERTIFICATE AUTHORITY':<24}{'EXPIRES':<25}{'RESIDUAL TIME':<16}EXTERNALLY MANAGED"
    )
    for r in authorities:
        lines.append(f"{r.name:<24}{_when(r):<25}{r.residual:<16}{yes_no[r.externally_managed]}")
    bundles = [r for r in authorities if len(r.bundle) > 1]
    if bundles:
        lines.append("")
        lines.append("CA BUNDLES (a rotation is under way: each file trusts all of these)")
        for r in bundles:
            for key_id, expires in r.bundle:
                when = datetime.fromisoformat(expires).strftime("%b %d, %Y %H:%M UTC")
                lines.append(f"{r.name:<24}key {key_id[:16]}  expires {when}")
    return "\n".join(lines) + "\n"


def render_json(certificates: list[Row], authorities: list[Row]) -> str:
    return json.dumps(
        {
            "certificates": [asdict(r) for r in certificates],
            "certificate_authorities": [
                {k: v for k, v in asdict(r).items() if k != "authority"} for r in authorities
            ],
        },
        indent=2,
    )
