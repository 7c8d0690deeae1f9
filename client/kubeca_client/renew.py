"""`kubeca renew`: re-issue what nears expiry, with the same profile and inputs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kubeca_client.client import Client
from kubeca_client.errors import InvalidArgument
from kubeca_client.keys import algorithm_of, build_csr, generate_private_key
from kubeca_client.keys import private_key_pem as encode_key
from kubeca_client.kubeconfig import read_kubeconfig, user_of
from kubeca_client.layout import CONTROL_PLANE_KUBECONFIGS, CONTROL_PLANE_LEAVES, WORKER_SERVING
from kubeca_client.slots import (
    LayoutError,
    Pending,
    Report,
    Slot,
    finish,
    prepare_root,
    read_manifest,
    renewal_due,
    signed_by_old_generation,
)


def _existing_slots(root: Path, manifest: Mapping[str, Any]) -> list[Slot]:
    """Every certificate of a kubeadm or kubeca layout found under ``root``."""
    slots: list[Slot] = []
    for leaf in (*CONTROL_PLANE_LEAVES, WORKER_SERVING):
        if leaf.cert_path(root).exists():
            entry = manifest.get(leaf.name, {})
            slots.append(
                Slot(
                    leaf.name,
                    leaf.profile,
                    leaf.authority,
                    entry.get("parameters", {}),
                    leaf=leaf,
                    lifetime_seconds=entry.get("lifetime_seconds", 0),
                )
            )
    for conf in CONTROL_PLANE_KUBECONFIGS:
        if conf.path(root).exists():
            fields = read_kubeconfig(conf.path(root))
            entry = manifest.get(conf.name, {})
            slots.append(
                Slot(
                    conf.name,
                    conf.profile,
                    conf.authority,
                    entry.get("parameters", {}),
                    kubeconfig=conf,
                    server=fields.get("server", "") or entry.get("server", ""),
                    user=user_of(fields),
                    lifetime_seconds=entry.get("lifetime_seconds", 0),
                )
            )
    return slots


def renew_layout(
    client: Client,
    root: Path,
    within: timedelta | None,
    reuse_key: bool,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Report:
    """Re-issue every certificate inside its renewal window, same profile and inputs."""
    prepare_root(root)
    manifest = read_manifest(root)
    slots = _existing_slots(root, manifest)
    if not slots:
        raise InvalidArgument(f"--dir: no certificates of a kubeadm layout under {root}")
    required = {p.name: {q.name for q in p.parameters if q.required} for p in client.profiles()}
    cas = {ca.authority: ca for ca in client.ca_certificates()}
    report = Report()
    pending: list[Pending] = []
    problems: list[str] = []
    moment = now()
    for slot in slots:
        pair = slot.read(root)
        if pair is None:
            problems.append(f"{slot.name}: its certificate or key cannot be read")
            continue
        certificate, key = pair
        ca = cas[slot.authority]
        rotated = signed_by_old_generation(certificate, ca.issuing_key_id) or slot.stale_trust(
            root, ca.bundle_pem
        )
        if not rotated and not renewal_due(certificate, moment, within):
            report.unchanged.append(slot.name)
            continue
        if required[slot.profile] - set(slot.parameters):
            problems.append(
                f"{slot.name}: no record of the parameters it was issued with (not written "
                "by kubeca); re-run 'kubeca pki' for this node instead"
            )
            continue
        if not reuse_key:
            key = generate_private_key(algorithm_of(key))
        # The same key asks the same question: without force_new the server's
        # idempotency would hand back the certificate being renewed.
        pending.append(
            Pending(slot, build_csr(key), encode_key(key), new_key=not reuse_key, force_new=True)
        )
    if problems:
        raise LayoutError("nothing was renewed: " + "; ".join(problems))
    finish(client, root, cas, slots, pending, manifest, report)
    return report
