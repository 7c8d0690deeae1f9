"""kubeca: get certificates from a kubeca service; leaf keys are made here and stay here."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from kubeca_client.client import Client
from kubeca_client.config import load_client_config
from kubeca_client.errors import ConfigError, InvalidArgument, KubecaError
from kubeca_client.files import PRIVATE, PUBLIC, atomic_write
from kubeca_client.keys import KeyAlgorithm, build_csr, generate_private_key, private_key_pem

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
