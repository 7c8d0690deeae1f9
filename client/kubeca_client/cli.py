"""kubeca: get certificates from a kubeca service; leaf keys are made here and stay here."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kubeca_client.client import Client
from kubeca_client.config import load_client_config
from kubeca_client.errors import ConfigError, InvalidArgument, KubecaError
from kubeca_client.expiry import render_json, render_text, scan
from kubeca_client.files import PRIVATE, PUBLIC, atomic_write
from kubeca_client.keys import KeyAlgorithm, build_csr, generate_private_key, private_key_pem
from kubeca_client.kubeadm_csrs import NodeInputs, sign_kubeadm_csrs
from kubeca_client.names import (
    parse_cidr,
    parse_dns_name,
    parse_endpoint_host,
    parse_ip,
    parse_san_list,
)
from kubeca_client.pki import (
    ControlPlane,
    control_plane_slots,
    ensure_layout,
    worker_slots,
)
from kubeca_client.renew import renew_layout
from kubeca_client.slots import Report

CONFIG_ENV = "KUBECA_CLIENT_CONFIG"
_DURATION = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str) -> timedelta:
    """'90d', '12h', '1h30m', '600s'."""
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise InvalidArgument(f"{text!r} is not a duration like 90d, 12h, 30m or 600s")
    total = timedelta()
    for number, unit in parts:
        total += timedelta(**{_UNITS[unit]: int(number)})
    return total


def parse_params(items: Sequence[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise InvalidArgument(f"--param {item!r} must be NAME=VALUE")
        if name in params:
            raise InvalidArgument(f"--param {name} is given twice")
        params[name] = value
    return params


def _writable_target(path: Path, flag: str) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InvalidArgument(f"{flag}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InvalidArgument(f"{flag}: directory {parent} is not writable")
    if path.is_dir():
        raise InvalidArgument(f"{flag}: {path} is a directory")


def _client(args: argparse.Namespace) -> Client:
    path = args.config or os.environ.get(CONFIG_ENV)
    if not path:
        raise ConfigError(f"no client config: pass --config FILE or set {CONFIG_ENV}")
    return Client.from_config(load_client_config(Path(path)))


def cmd_issue(args: argparse.Namespace) -> int:
    params = parse_params(args.param)
    lifetime = parse_duration(args.lifetime) if args.lifetime else None
    _writable_target(args.cert_out, "--cert-out")
    if args.ca_out:
        _writable_target(args.ca_out, "--ca-out")
    key = None
    if args.csr:
        try:
            csr = args.csr.read_bytes()
        except OSError as exc:
            raise InvalidArgument(f"--csr: cannot read {args.csr}: {exc.strerror}") from None
    else:
        _writable_target(args.key_out, "--key-out")
        if args.key_out.exists():
            raise InvalidArgument(
                f"--key-out: {args.key_out} exists; kubeca never overwrites a private key "
                "(remove it, or pass its CSR with --csr)"
            )
        try:
            algorithm = KeyAlgorithm.parse(args.key_algorithm)
        except ValueError as exc:
            raise InvalidArgument(f"--key-algorithm: {exc}") from None
        key = generate_private_key(algorithm)
        csr = build_csr(key)
    with _client(args) as client:
        issued = client.issue_certificate(
            args.profile,
            csr,
            params,
            int(lifetime.total_seconds()) if lifetime else 0,
        )
    # The key is written before the certificate, so a certificate never exists
    # on disk without its key.
    if key is not None:
        atomic_write(args.key_out, private_key_pem(key), PRIVATE)
    atomic_write(args.cert_out, issued.certificate_pem.encode(), PUBLIC)
    if args.ca_out:
        atomic_write(args.ca_out, issued.ca_certificate_pem.encode(), PUBLIC)
    print(
        f"issued {args.profile} by {issued.authority}: serial {issued.serial}, "
        f"expires {issued.not_after:%Y-%m-%d %H:%M}Z -> {args.cert_out}"
    )
    return 0


def cmd_ca(args: argparse.Namespace) -> int:
    with _client(args) as client:
        authorities = client.ca_certificates(args.authority or "")
    for ca in authorities:
        if args.hash:
            print(f"{ca.authority} {ca.ca_cert_hash}")
        else:
            sys.stdout.write(ca.certificate_pem)
    return 0


def cmd_profiles(args: argparse.Namespace) -> int:
    with _client(args) as client:
        profiles = client.profiles()
    if args.output == "json":
        print(
            json.dumps(
                [
                    {
                        "name": p.name,
                        "authority": p.authority,
                        "common_name": p.common_name,
                        "organizations": list(p.organizations),
                        "extended_key_usages": list(p.extended_key_usages),
                        "san_rule": p.san_rule,
                        "parameters": [
                            {"name": q.name, "required": q.required, "default": q.default_value}
                            for q in p.parameters
                        ],
                        "max_lifetime_seconds": p.max_lifetime_seconds,
                        "enabled": p.enabled,
                    }
                    for p in profiles
                ],
                indent=2,
            )
        )
        return 0
    print(f"{'PROFILE':<26}{'CA':<16}{'SUBJECT':<46}PARAMETERS")
    for p in profiles:
        subject = (f"O={','.join(p.organizations)} " if p.organizations else "") + (
            f"CN={p.common_name}"
        )
        params = ", ".join(q.name + ("" if q.required else "?") for q in p.parameters) or "-"
        state = "" if p.enabled else "  (disabled)"
        print(f"{p.name:<26}{p.authority:<16}{subject:<46}{params}{state}")
    return 0


def _sans(values: Sequence[str], flag: str) -> list[str]:
    items = [item.strip() for value in values for item in value.split(",") if item.strip()]
    parse_san_list(",".join(items), flag)
    return items


def _lifetime_seconds(args: argparse.Namespace) -> int:
    return int(parse_duration(args.lifetime).total_seconds()) if args.lifetime else 0


def _key_algorithm(args: argparse.Namespace) -> KeyAlgorithm:
    try:
        return KeyAlgorithm.parse(args.key_algorithm)
    except ValueError as exc:
        raise InvalidArgument(f"--key-algorithm: {exc}") from None


def _print_report(report: Report, root: Path) -> None:
    for line in report.lines(root):
        print(line)


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
            parse_cidr(part.strip(), "--service-cidr")
    if spec.dns_domain:
        parse_dns_name(spec.dns_domain, "--dns-domain")
    slots = control_plane_slots(spec, _lifetime_seconds(args))
    algorithm = _key_algorithm(args)
    with _client(args) as client:
        report = ensure_layout(client, args.dir, slots, algorithm, service_account_keys=True)
    _print_report(report, args.dir)
    return 0


def cmd_pki_worker(args: argparse.Namespace) -> int:
    node = parse_dns_name(args.node_name, "--node-name")
    address = str(parse_ip(args.address, "--address"))
    parse_endpoint_host(args.control_plane_endpoint, "--control-plane-endpoint")
    slots = worker_slots(node, address, args.control_plane_endpoint, _lifetime_seconds(args))
    algorithm = _key_algorithm(args)
    with _client(args) as client:
        report = ensure_layout(client, args.dir, slots, algorithm, service_account_keys=False)
    _print_report(report, args.dir)
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
    with _client(args) as client:
        report = sign_kubeadm_csrs(client, args.dir, given)
    _print_report(report, args.dir)
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
    with _client(args) as client:
        report = renew_layout(client, args.dir, within, args.reuse_key)
    _print_report(report, args.dir)
    return 0


def _add_layout_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, required=True, help="e.g. /etc/kubernetes")
    parser.add_argument(
        "--key-algorithm",
        default=KeyAlgorithm.ECDSA_P256.value,
        help="for new keys: ECDSA-P256 (default), ECDSA-P384, RSA-2048, RSA-3072, RSA-4096",
    )
    parser.add_argument("--lifetime", help="certificate lifetime, e.g. 90d (default: 365d)")


def _add_pki_commands(commands: Any) -> None:
    pki = commands.add_parser("pki", help="write a node's whole kubeadm layout")
    kinds = pki.add_subparsers(dest="kind", required=True)

    control = kinds.add_parser("control-plane", help="CAs, every leaf, sa keys, kubeconfigs")
    control.add_argument("--node-name", required=True)
    control.add_argument("--advertise-address", required=True)
    control.add_argument("--control-plane-endpoint", help="HOST[:PORT] (default: advertise)")
    control.add_argument("--service-cidr", help="default 10.96.0.0/12")
    control.add_argument("--dns-domain", help="default cluster.local")
    control.add_argument("--apiserver-cert-sans", action="append", default=[], metavar="SANS")
    control.add_argument("--etcd-sans", action="append", default=[], metavar="SANS")
    _add_layout_options(control)
    control.set_defaults(run=cmd_pki_control_plane)

    worker = kinds.add_parser("worker", help="the kubelet's kubeconfig and serving certificate")
    worker.add_argument("--node-name", required=True)
    worker.add_argument("--address", required=True, help="the node's IP address")
    worker.add_argument("--control-plane-endpoint", required=True, help="HOST[:PORT]")
    _add_layout_options(worker)
    worker.set_defaults(run=cmd_pki_worker)

    sign = commands.add_parser("sign-csrs", help="sign what 'kubeadm certs generate-csr' wrote")
    sign.add_argument("--dir", type=Path, required=True)
    sign.add_argument("--node-name", help="default: from the etcd or kubelet CSR")
    sign.add_argument("--advertise-address", help="default: from the etcd server CSR")
    sign.add_argument("--service-cidr")
    sign.add_argument("--dns-domain")
    sign.set_defaults(run=cmd_sign_csrs)

    check = commands.add_parser("check-expiration", help="kubeadm's expiry tables (offline)")
    check.add_argument("--dir", type=Path, required=True)
    check.add_argument("-o", "--output", choices=["table", "json"], default="table")
    check.set_defaults(run=cmd_check_expiration)

    renew = commands.add_parser("renew", help="re-issue certificates near expiry")
    renew.add_argument("--dir", type=Path, required=True)
    renew.add_argument("--within", help="renew what expires within this (default: last third)")
    renew.add_argument("--reuse-key", action="store_true", help="keep each existing key")
    renew.set_defaults(run=cmd_renew)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubeca", description="Kubernetes certificates from an HSM-backed CA"
    )
    parser.add_argument(
        "--config", help=f"client config (TOML); default: ${CONFIG_ENV}", default=None
    )
    commands = parser.add_subparsers(dest="command", required=True)

    issue = commands.add_parser("issue", help="issue one certificate under a profile")
    issue.add_argument("--profile", required=True)
    issue.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE", help="profile parameter"
    )
    source = issue.add_mutually_exclusive_group(required=True)
    source.add_argument("--key-out", type=Path, help="generate a key here (0600) and use it")
    source.add_argument("--csr", type=Path, help="use this CSR (PEM or DER) instead")
    issue.add_argument("--cert-out", type=Path, required=True)
    issue.add_argument("--ca-out", type=Path, help="also write the issuing CA's certificate")
    issue.add_argument(
        "--key-algorithm",
        default=KeyAlgorithm.ECDSA_P256.value,
        help="ECDSA-P256 (default), ECDSA-P384, RSA-2048, RSA-3072, RSA-4096",
    )
    issue.add_argument("--lifetime", help="e.g. 24h, 90d (default: the profile's)")
    issue.set_defaults(run=cmd_issue)

    ca = commands.add_parser("ca", help="print the CA certificates (PEM)")
    ca.add_argument("--authority", help="kubernetes-ca, etcd-ca or front-proxy-ca")
    ca.add_argument("--hash", action="store_true", help="print kubeadm-style SPKI hashes instead")
    ca.set_defaults(run=cmd_ca)

    profiles = commands.add_parser("profiles", help="list the profiles the service issues")
    profiles.add_argument("-o", "--output", choices=["table", "json"], default="table")
    profiles.set_defaults(run=cmd_profiles)

    _add_pki_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code: int = args.run(args)
        return code
    except KubecaError as exc:
        print(f"kubeca: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        print(f"kubeca: error: {exc.filename or ''}: {exc.strerror}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
