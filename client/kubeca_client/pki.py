"""`kubeca pki`: a node's whole layout in kubeadm's External CA shape.

A control plane gets the three CA certificates (never their keys), every leaf of
kubeadm's certlist, sa.pub with the kubeadm patch for kube-apiserver's signing
endpoint (kubeca holds the service-account key; see sa_layout) and the five
kubeconfigs; a worker gets the kubelet's client kubeconfig and serving certificate.
What is current is kept.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from kubeca_client.client import Client, ProfileInfo
from kubeca_client.errors import InvalidArgument
from kubeca_client.keys import KeyAlgorithm, build_csr, generate_private_key
from kubeca_client.keys import private_key_pem as encode_key
from kubeca_client.layout import (
    CONTROL_PLANE_KUBECONFIGS,
    CONTROL_PLANE_LEAVES,
    SUPER_ADMIN,
    WORKER_KUBELET_CONF,
    WORKER_SERVING,
)
from kubeca_client.sa_layout import DEFAULT_ENDPOINT, local_key_writes, signer_writes
from kubeca_client.slots import (
    SUPER_ADMIN_NOTE,
    Pending,
    Report,
    Slot,
    Write,
    finish,
    prepare_root,
    read_manifest,
    renewal_due,
    valid_pair,
)

DEFAULT_API_PORT = 6443


@dataclass(frozen=True)
class ServiceAccountFiles:
    """What a control plane gets for service-account tokens: by default sa.pub and the
    kubeadm patch for kube-apiserver's signing endpoint; with ``local_key``, the old
    sa.key on disk (clusters older than 1.32)."""

    endpoint: Path = DEFAULT_ENDPOINT
    local_key: bool = False


@dataclass(frozen=True)
class ControlPlane:
    node_name: str
    advertise_address: str
    control_plane_endpoint: str = ""
    service_cidr: str = ""
    dns_domain: str = ""
    apiserver_cert_sans: Sequence[str] = ()
    etcd_sans: Sequence[str] = ()
    api_port: int = DEFAULT_API_PORT


def https_url(host_port: str, default_port: int = DEFAULT_API_PORT) -> str:
    """https://HOST:PORT for HOST, HOST:PORT, [V6] or [V6]:PORT, or a bare IPv6 address."""
    if host_port.startswith("["):
        return f"https://{host_port}" + ("" if "]:" in host_port else f":{default_port}")
    if host_port.count(":") == 1:
        return f"https://{host_port}"
    if ":" in host_port:
        return f"https://[{host_port}]:{default_port}"
    return f"https://{host_port}:{default_port}"


def _parameters(profile: ProfileInfo, values: Mapping[str, str]) -> dict[str, str]:
    """The values a profile declares it takes (the service says which, in ListProfiles),
    leaving out those not given."""
    declared = {p.name for p in profile.parameters}
    return {name: value for name, value in values.items() if name in declared and value}


def _profile(profiles: Mapping[str, ProfileInfo], name: str) -> ProfileInfo:
    found = profiles.get(name)
    if found is None:
        raise InvalidArgument(f"the service offers no {name} profile, which this layout needs")
    return found


def user_name(profile: ProfileInfo, node_name: str) -> str:
    """A kubeconfig's user: the subject CN the profile issues, as kubeadm names it."""
    return profile.common_name.replace("{node_name}", node_name)


def control_plane_slots(
    spec: ControlPlane, profiles: Mapping[str, ProfileInfo], lifetime_seconds: int = 0
) -> list[Slot]:
    node = {
        "node_name": spec.node_name,
        "advertise_address": spec.advertise_address,
        "control_plane_endpoint": spec.control_plane_endpoint,
        "service_cidr": spec.service_cidr,
        "dns_domain": spec.dns_domain,
    }
    extra = {"apiserver": spec.apiserver_cert_sans, "etcd": spec.etcd_sans}
    slots = []
    for leaf in CONTROL_PLANE_LEAVES:
        values = dict(node, extra_sans=",".join(extra.get(leaf.extra_sans, ())))
        slots.append(
            Slot(
                leaf.name,
                leaf.profile,
                leaf.authority,
                _parameters(_profile(profiles, leaf.profile), values),
                leaf=leaf,
                lifetime_seconds=lifetime_seconds,
            )
        )
    endpoint = https_url(spec.control_plane_endpoint or spec.advertise_address, spec.api_port)
    local = https_url(spec.advertise_address, spec.api_port)
    for conf in CONTROL_PLANE_KUBECONFIGS:
        profile = _profile(profiles, conf.profile)
        slots.append(
            Slot(
                conf.name,
                conf.profile,
                conf.authority,
                _parameters(profile, {"node_name": spec.node_name}),
                kubeconfig=conf,
                server=local if conf.local_endpoint else endpoint,
                user=user_name(profile, spec.node_name),
                lifetime_seconds=lifetime_seconds,
            )
        )
    return slots


def worker_slots(
    node_name: str,
    address: str,
    control_plane_endpoint: str,
    profiles: Mapping[str, ProfileInfo],
    lifetime_seconds: int = 0,
) -> list[Slot]:
    client_profile = _profile(profiles, WORKER_KUBELET_CONF.profile)
    serving_profile = _profile(profiles, WORKER_SERVING.profile)
    node = {"node_name": node_name, "advertise_address": address}
    return [
        Slot(
            WORKER_KUBELET_CONF.name,
            WORKER_KUBELET_CONF.profile,
            WORKER_KUBELET_CONF.authority,
            _parameters(client_profile, node),
            kubeconfig=WORKER_KUBELET_CONF,
            server=https_url(control_plane_endpoint),
            user=user_name(client_profile, node_name),
            lifetime_seconds=lifetime_seconds,
        ),
        Slot(
            WORKER_SERVING.name,
            WORKER_SERVING.profile,
            WORKER_SERVING.authority,
            _parameters(serving_profile, node),
            leaf=WORKER_SERVING,
            lifetime_seconds=lifetime_seconds,
        ),
    ]


def ensure_layout(
    client: Client,
    root: Path,
    plan: Callable[[Mapping[str, ProfileInfo]], Sequence[Slot]],
    key_algorithm: KeyAlgorithm,
    *,
    service_account: ServiceAccountFiles | None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Report:
    """Make ``root`` hold every slot ``plan`` makes of the service's profiles, current
    and valid; keep what is."""
    prepare_root(root)
    cas = {ca.authority: ca for ca in client.ca_certificates()}
    profiles = {p.name: p for p in client.profiles()}
    slots = plan(profiles)
    enabled = {name: p.enabled for name, p in profiles.items()}
    manifest = read_manifest(root)
    report = Report()
    pending: list[Pending] = []
    moment = now()
    for slot in slots:
        ca = x509.load_pem_x509_certificate(cas[slot.authority].certificate_pem.encode())
        current = valid_pair(slot.read(root), ca)
        if (
            current is not None
            and not renewal_due(current, moment, None)
            and manifest.get(slot.name) == slot.record()
        ):
            report.unchanged.append(slot.name)
            continue
        if not enabled.get(slot.profile, False):
            why = f"the server does not grant the {slot.profile} profile (to this caller)"
            if slot.kubeconfig is SUPER_ADMIN:
                why += f"; {SUPER_ADMIN_NOTE}"
            report.skipped.append((slot.name, why))
            continue
        key = generate_private_key(key_algorithm)
        pending.append(Pending(slot, build_csr(key), encode_key(key), new_key=True))
    extra: list[Write] = []
    if service_account is not None:
        extra = (
            local_key_writes(root)
            if service_account.local_key
            else signer_writes(root, client.service_account_keys(), service_account.endpoint)
        )
    finish(client, root, cas, slots, pending, manifest, report, extra)
    return report
