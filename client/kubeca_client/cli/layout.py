"""kubeca pki, sign-csrs, check-expiration, renew: whole kubeadm layouts."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubeca_client.cli.common import (
    TOKEN_ENV,
    add_layout_options,
    connect,
    key_algorithm,
    lifetime_seconds,
    parse_duration,
    print_report,
)
from kubeca_client.errors import InvalidArgument
from kubeca_client.expiry import render_json, render_text, scan
from kubeca_client.kubeadm_csrs import NodeInputs, layout_root, sign_kubeadm_csrs
from kubeca_client.names import (
    parse_cidr,
    parse_dns_name,
    parse_endpoint_host,
    parse_ip,
    parse_san_list,
    service_address,
)
from kubeca_client.pki import (
    ControlPlane,
    ServiceAccountFiles,
    control_plane_slots,
    ensure_layout,
    worker_slots,
)
from kubeca_client.renew import renew_layout
from kubeca_client.sa_layout import (
    APISERVER_PATCH,
    CONTROLLER_MANAGER_NOTE,
    DEFAULT_ENDPOINT,
    LOCAL_KEY_WARNING,
    PATCH_DIR,
)


def _sans(values: Sequence[str], flag: str) -> list[str]:
    items = [item.strip() for value in values for item in value.split(",") if item.strip()]
    parse_san_list(",".join(items), flag)
    return items


def cmd_pki_control_plane(args: argparse.Namespace) -> int:
    spec = ControlPlane(
        node_name=parse_dns_name(args.node_name, "--node-name"),
        advertise_address=str(parse_ip(args.advertise_address, "--advertise-address")),
        control_plane_endpoint=args.control_plane_endpoint or "",
        service_cidr=args.service_cidr or "",
        dns_domain=args.dns_domain or "",
        apiserver_cert_sans=_sans(args.apiserver_cert_sans, "--apiserver-cert-sans"),
        etcd_sans=_sans(args.etcd_sans, "--etcd-sans"),
    )
    if spec.control_plane_endpoint:
        parse_endpoint_host(spec.control_plane_endpoint, "--control-plane-endpoint")
    if spec.service_cidr:
        for part in spec.service_cidr.split(","):
            service_address(parse_cidr(part.strip(), "--service-cidr"), "--service-cidr")
    if spec.dns_domain:
        parse_dns_name(spec.dns_domain, "--dns-domain")
    lifetime = lifetime_seconds(args)
    algorithm = key_algorithm(args)
    endpoint = Path(args.signing_endpoint)
    if not endpoint.is_absolute():
        raise InvalidArgument("--signing-endpoint must be an absolute path")
    if args.local_sa_key:
        print(LOCAL_KEY_WARNING, file=sys.stderr)
    with connect(args) as client:
        report = ensure_layout(
            client,
            args.dir,
            lambda profiles: control_plane_slots(spec, profiles, lifetime),
            algorithm,
            service_account=ServiceAccountFiles(endpoint, args.local_sa_key),
        )
    print_report(report, args.dir)
    patches = args.dir / PATCH_DIR
    if not args.local_sa_key and patches / APISERVER_PATCH in report.written:
        # Said when the patch is (re)written: what to do with it.
        print(f"kube-apiserver: kubeadm init --patches {patches} (signs through {endpoint})")
        print(CONTROLLER_MANAGER_NOTE)
        if (args.dir / "pki" / "sa.key").exists():
            print(
                f"note: {args.dir / 'pki' / 'sa.key'} is left from before; remove it once "
                "kube-apiserver signs through the endpoint (its public key stays "
                "verifiable only while sa.pub holds it)"
            )
    return 0


def cmd_pki_worker(args: argparse.Namespace) -> int:
    node = parse_dns_name(args.node_name, "--node-name")
    address = str(parse_ip(args.address, "--address"))
    parse_endpoint_host(args.control_plane_endpoint, "--control-plane-endpoint")
    lifetime = lifetime_seconds(args)
    algorithm = key_algorithm(args)
    with connect(args) as client:
        report = ensure_layout(
            client,
            args.dir,
            lambda profiles: worker_slots(
                node, address, args.control_plane_endpoint, profiles, lifetime
            ),
            algorithm,
            service_account=None,
        )
    print_report(report, args.dir)
    return 0


def cmd_sign_csrs(args: argparse.Namespace) -> int:
    given = NodeInputs(
        node_name=parse_dns_name(args.node_name, "--node-name") if args.node_name else "",
        advertise_address=str(parse_ip(args.advertise_address, "--advertise-address"))
        if args.advertise_address
        else "",
        service_cidr=args.service_cidr or "",
        dns_domain=args.dns_domain or "",
    )
    root = layout_root(args.dir)
    with connect(args) as client:
        report = sign_kubeadm_csrs(client, root, given)
    print_report(report, root)
    return 0


def cmd_check_expiration(args: argparse.Namespace) -> int:
    if not args.dir.is_dir():
        raise InvalidArgument(f"--dir: {args.dir} is not a directory")
    certificates, authorities = scan(args.dir, datetime.now(UTC))
    if args.output == "json":
        print(render_json(certificates, authorities))
    else:
        sys.stdout.write(render_text(certificates, authorities))
    return 0


def cmd_renew(args: argparse.Namespace) -> int:
    within = parse_duration(args.within) if args.within else None
    with connect(args) as client:
        report = renew_layout(client, args.dir, within, args.reuse_key)
    print_report(report, args.dir)
    return 0


def add_commands(commands: Any) -> None:
    pki = commands.add_parser("pki", help="write a node's whole kubeadm layout")
    kinds = pki.add_subparsers(dest="kind", required=True)

    control = kinds.add_parser(
        "control-plane", help="CAs, every leaf, sa.pub and the signer patch, kubeconfigs"
    )
    control.add_argument("--node-name", required=True, help="this node's name (its DNS name)")
    control.add_argument(
        "--advertise-address", required=True, help="the IP the API server advertises"
    )
    control.add_argument("--control-plane-endpoint", help="HOST[:PORT] (default: advertise)")
    control.add_argument("--service-cidr", help="default 10.96.0.0/12")
    control.add_argument("--dns-domain", help="default cluster.local")
    control.add_argument(
        "--apiserver-cert-sans",
        action="append",
        default=[],
        metavar="SANS",
        help="extra DNS names or IPs for the API server certificate, comma-separated",
    )
    control.add_argument(
        "--etcd-sans",
        action="append",
        default=[],
        metavar="SANS",
        help="extra DNS names or IPs for etcd's server and peer certificates",
    )
    control.add_argument(
        "--signing-endpoint",
        default=str(DEFAULT_ENDPOINT),
        help="the ExternalJWTSigner socket kube-apiserver dials (kubeca signer-proxy "
        f"--socket), default {DEFAULT_ENDPOINT}",
    )
    control.add_argument(
        "--local-sa-key",
        action="store_true",
        help="write sa.key to disk as kubeadm does: only for clusters older than 1.32",
    )
    add_layout_options(control)
    control.set_defaults(run=cmd_pki_control_plane)

    worker = kinds.add_parser("worker", help="the kubelet's kubeconfig and serving certificate")
    worker.add_argument("--node-name", required=True, help="this node's name (its DNS name)")
    worker.add_argument("--address", required=True, help="the node's IP address")
    worker.add_argument("--control-plane-endpoint", required=True, help="HOST[:PORT]")
    worker.add_argument("--token-file", type=Path, help=f"bootstrap token (or ${TOKEN_ENV})")
    worker.add_argument("--ca-cert-hash", help="sha256:... of the service CA, with --server")
    worker.add_argument(
        "--server",
        help="the service's bootstrap address HOST:PORT, or replicas as HOST:PORT,HOST:PORT",
    )
    add_layout_options(worker)
    worker.set_defaults(run=cmd_pki_worker)

    sign = commands.add_parser("sign-csrs", help="sign what 'kubeadm certs generate-csr' wrote")
    sign.add_argument(
        "--dir",
        type=Path,
        required=True,
        help="where 'kubeadm certs generate-csr' wrote: its --kubeconfig-dir (e.g. "
        "/etc/kubernetes, with pki/ under it) or its --cert-dir (a directory named pki)",
    )
    sign.add_argument("--node-name", help="default: from the etcd or kubelet CSR")
    sign.add_argument("--advertise-address", help="default: from the etcd server CSR")
    sign.add_argument("--service-cidr", help="default 10.96.0.0/12")
    sign.add_argument("--dns-domain", help="default cluster.local")
    sign.set_defaults(run=cmd_sign_csrs)

    check = commands.add_parser("check-expiration", help="kubeadm's expiry tables (offline)")
    check.add_argument(
        "--dir", type=Path, required=True, help="the kubeconfig directory, e.g. /etc/kubernetes"
    )
    check.add_argument(
        "-o", "--output", choices=["table", "json"], default="table", help="default: table"
    )
    check.set_defaults(run=cmd_check_expiration)

    renew = commands.add_parser("renew", help="re-issue certificates near expiry")
    renew.add_argument(
        "--dir", type=Path, required=True, help="the kubeconfig directory, e.g. /etc/kubernetes"
    )
    renew.add_argument("--within", help="renew what expires within this (default: last third)")
    renew.add_argument("--reuse-key", action="store_true", help="keep each existing key")
    renew.set_defaults(run=cmd_renew)
