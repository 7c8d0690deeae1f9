"""`kubeca sign-csrs`: sign what `kubeadm certs generate-csr` left in a directory.

kubeadm's CSRs carry the subject and SANs it computed but no usages; the profiles
supply those. The keys beside the CSRs stay exactly as kubeadm wrote them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from kubeca_client.client import Client, ProfileInfo
from kubeca_client.errors import InvalidArgument
from kubeca_client.keys import PrivateKey, spki_der
from kubeca_client.kubeconfig import decode_field, read_kubeconfig, user_of
from kubeca_client.layout import CONTROL_PLANE_KUBECONFIGS, CONTROL_PLANE_LEAVES
from kubeca_client.slots import (
    Pending,
    Report,
    Slot,
    finish,
    prepare_root,
    read_manifest,
)


@dataclass(frozen=True)
class NodeInputs:
    """What the profiles need beyond the CSRs; derived from them where kubeadm put it."""

    node_name: str = ""
    advertise_address: str = ""
    service_cidr: str = ""
    dns_domain: str = ""


def layout_root(given: Path) -> Path:
    """The kubeconfig directory (the layout's root, with pki/ under it) for ``--dir``.

    `kubeadm certs generate-csr` takes --kubeconfig-dir (/etc/kubernetes) and --cert-dir
    (/etc/kubernetes/pki); users point --dir at either. A directory named pki without a
    pki/ of its own is the certificate directory, and its parent is the root.
    """
    if given.name == "pki" and not (given / "pki").is_dir() and given.is_dir():
        return given.parent
    if not (given / "pki").is_dir() and any(
        (given / f"{leaf.base}.csr").exists() for leaf in CONTROL_PLANE_LEAVES
    ):
        raise InvalidArgument(
            f"--dir: {given} holds kubeadm's certificate CSRs but is not named pki; "
            "kubeadm reads certificates from <dir>/pki, so generate them with "
            "--cert-dir <dir>/pki and pass <dir> (or <dir>/pki) here"
        )
    return given


def _csr_sans(csr: x509.CertificateSigningRequest) -> list[str]:
    try:
        sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [
        *sans.get_values_for_type(x509.DNSName),
        *map(str, sans.get_values_for_type(x509.IPAddress)),
    ]


def _derive_node(
    found: Mapping[str, x509.CertificateSigningRequest], given: NodeInputs
) -> NodeInputs:
    node, address = given.node_name, given.advertise_address
    etcd = found.get("etcd-server")
    kubelet = found.get("kubelet.conf")
    if not node and etcd is not None:
        node = _common_name(etcd)
    if not node and kubelet is not None:
        node = _common_name(kubelet).removeprefix("system:node:")
    if not address and etcd is not None:
        loopback = {"127.0.0.1", "::1"}
        address = next((ip for ip in _csr_ips(etcd) if ip not in loopback), "")
    return NodeInputs(node, address, given.service_cidr, given.dns_domain)


def _common_name(csr: x509.CertificateSigningRequest) -> str:
    names = csr.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def _csr_ips(csr: x509.CertificateSigningRequest) -> list[str]:
    try:
        sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]


@dataclass(frozen=True)
class Found:
    """A kubeadm CSR, its slot, and the key kubeadm left beside it."""

    slot: Slot
    csr_path: Path
    csr: x509.CertificateSigningRequest
    key_pem: bytes


def _locate(root: Path) -> list[tuple[Slot, Path, bytes]]:
    located: list[tuple[Slot, Path, bytes]] = []
    for leaf in CONTROL_PLANE_LEAVES:
        if leaf.csr_path(root).exists():
            key_path = leaf.key_path(root)
            if not key_path.exists():
                raise InvalidArgument(f"{leaf.csr_path(root)} has no key beside it ({key_path})")
            slot = Slot(leaf.name, leaf.profile, leaf.authority, {}, leaf=leaf)
            located.append((slot, leaf.csr_path(root), key_path.read_bytes()))
    for conf in CONTROL_PLANE_KUBECONFIGS:
        if conf.csr_path(root).exists():
            fields = read_kubeconfig(conf.path(root)) if conf.path(root).exists() else {}
            key_pem = decode_field(fields, "client-key-data", conf.path(root))
            if key_pem is None:
                raise InvalidArgument(f"{conf.path(root)} has no client-key-data for its CSR")
            if not fields.get("server"):
                raise InvalidArgument(f"{conf.path(root)} names no server")
            slot = Slot(
                conf.name,
                conf.profile,
                conf.authority,
                {},
                kubeconfig=conf,
                server=fields["server"],
                user=user_of(fields),
            )
            located.append((slot, conf.csr_path(root), key_pem))
    if not located:
        raise InvalidArgument(
            f"--dir: no CSRs from 'kubeadm certs generate-csr' under {root} "
            "(expected pki/<name>.csr and <name>.conf.csr)"
        )
    return located


def _check(slot: Slot, csr_path: Path, key_pem: bytes) -> Found:
    """The CSR must be readable and made from the key beside it."""
    try:
        csr = x509.load_pem_x509_csr(csr_path.read_bytes())
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # TypeError: an encrypted key; kubeadm writes them unencrypted.
        raise InvalidArgument(f"{csr_path}: it or its key cannot be read ({exc})") from None
    if not isinstance(key, PrivateKey):
        raise InvalidArgument(f"{csr_path}: the key beside it is neither RSA nor ECDSA")
    if spki_der(key) != spki_der(csr):
        raise InvalidArgument(f"{csr_path} was not made from the key beside it")
    return Found(slot, csr_path, csr, key_pem)


def sign_kubeadm_csrs(client: Client, root: Path, given: NodeInputs) -> Report:
    """Sign what `kubeadm certs generate-csr` left in ``root``; the keys stay as they are."""
    prepare_root(root)
    found = [_check(*item) for item in _locate(root)]
    node = _derive_node({f.slot.name: f.csr for f in found}, given)
    profiles = {p.name: p for p in client.profiles()}
    slots = []
    for f in found:
        profile = profiles.get(f.slot.profile)
        if profile is None:
            raise InvalidArgument(f"{f.slot.name}: the service offers no {f.slot.profile} profile")
        parameters = _csr_parameters(profile, f.csr, node, f.slot.name)
        slots.append(replace(f.slot, parameters=parameters))
    pending = [
        Pending(slot, f.csr_path.read_bytes(), f.key_pem, new_key=False)
        for slot, f in zip(slots, found, strict=True)
    ]
    cas = {ca.authority: ca for ca in client.ca_certificates()}
    report = Report()
    finish(client, root, cas, slots, pending, read_manifest(root), report)
    return report


def _csr_parameters(
    profile: ProfileInfo, csr: x509.CertificateSigningRequest, node: NodeInputs, name: str
) -> dict[str, str]:
    """The profile's parameters for a kubeadm CSR, as the service declares them: its SANs
    become extra_sans, so the certificate carries exactly what kubeadm computed (plus
    nothing it would not)."""
    declared = {p.name: p for p in profile.parameters}
    params: dict[str, str] = {}
    given = {
        "node_name": (node.node_name, "--node-name"),
        "advertise_address": (node.advertise_address, "--advertise-address"),
        "service_cidr": (node.service_cidr, "--service-cidr"),
        "dns_domain": (node.dns_domain, "--dns-domain"),
    }
    for key, (value, flag) in given.items():
        parameter = declared.get(key)
        if parameter is None:
            continue
        if value:
            params[key] = value
        elif parameter.required:
            what = key.replace("_", " ")
            raise InvalidArgument(f"{name}: cannot tell the {what}; pass {flag}")
    sans = _csr_sans(csr)
    if sans and "extra_sans" in declared:
        params["extra_sans"] = ",".join(sans)
    return params
