"""kubeca issue, ca, profiles: one certificate at a time, and what the service offers."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from kubeca_client.cli.common import (
    connect,
    parse_duration,
    parse_params,
    writable_target,
)
from kubeca_client.errors import InvalidArgument
from kubeca_client.files import PRIVATE, PUBLIC, atomic_write
from kubeca_client.keys import KeyAlgorithm, build_csr, generate_private_key, private_key_pem


def cmd_issue(args: argparse.Namespace) -> int:
    params = parse_params(args.param)
    lifetime = parse_duration(args.lifetime) if args.lifetime else None
    writable_target(args.cert_out, "--cert-out")
    if args.ca_out:
        writable_target(args.ca_out, "--ca-out")
    key = None
    if args.csr:
        try:
            csr = args.csr.read_bytes()
        except OSError as exc:
            raise InvalidArgument(f"--csr: cannot read {args.csr}: {exc.strerror}") from None
    else:
        writable_target(args.key_out, "--key-out")
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
    with connect(args) as client:
        issued = client.issue_certificate(
            args.profile,
            csr,
            params,
            int(lifetime.total_seconds()) if lifetime else 0,
            force_new=args.new,
        )
    # The key is written before the certificate, so a certificate never exists
    # on disk without its key.
    if key is not None:
        try:
            atomic_write(args.key_out, private_key_pem(key), PRIVATE, exclusive=True)
        except FileExistsError:
            raise InvalidArgument(
                f"--key-out: {args.key_out} appeared while the certificate was issued; "
                "kubeca never overwrites a private key, so neither file was written"
            ) from None
    atomic_write(args.cert_out, issued.certificate_pem.encode(), PUBLIC)
    if args.ca_out:
        atomic_write(args.ca_out, issued.ca_certificate_pem.encode(), PUBLIC)
    verb = "reused" if issued.reused else "issued"
    print(
        f"{verb} {args.profile} by {issued.authority}: serial {issued.serial}, "
        f"expires {issued.not_after:%Y-%m-%d %H:%M}Z -> {args.cert_out}"
    )
    return 0


def cmd_ca(args: argparse.Namespace) -> int:
    with connect(args) as client:
        authorities = client.ca_certificates(args.authority or "")
    for ca in authorities:
        if args.hash:
            print(f"{ca.authority} {ca.ca_cert_hash}")
        elif args.info:
            key = ca.key_provenance or "unknown"
            note = " (existed outside the HSM once: rotate it)" if key == "imported" else ""
            print(
                f"{ca.authority}: issuing key {ca.issuing_key_id} {key}{note}, "
                f"{ca.trust_pem.count('BEGIN CERTIFICATE')} in the bundle, "
                f"expires {ca.not_after:%Y-%m-%d}"
            )
        elif args.bundle:
            sys.stdout.write(ca.trust_pem)
        elif args.cross:
            sys.stdout.write(ca.cross_certificate_pem)
        else:
            sys.stdout.write(ca.certificate_pem)
    return 0


def cmd_profiles(args: argparse.Namespace) -> int:
    with connect(args) as client:
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


def add_commands(commands: Any) -> None:
    issue = commands.add_parser("issue", help="issue one certificate under a profile")
    issue.add_argument("--profile", required=True, help="what to issue; see 'kubeca profiles'")
    issue.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE", help="profile parameter"
    )
    source = issue.add_mutually_exclusive_group(required=True)
    source.add_argument("--key-out", type=Path, help="generate a key here (0600) and use it")
    source.add_argument("--csr", type=Path, help="use this CSR (PEM or DER) instead")
    issue.add_argument("--cert-out", type=Path, required=True, help="write the certificate here")
    issue.add_argument("--ca-out", type=Path, help="also write the issuing CA's certificate")
    issue.add_argument(
        "--key-algorithm",
        default=KeyAlgorithm.ECDSA_P256.value,
        help="ECDSA-P256 (default), ECDSA-P384, RSA-2048, RSA-3072, RSA-4096",
    )
    issue.add_argument("--lifetime", help="e.g. 24h, 90d (default: the profile's)")
    issue.add_argument(
        "--new", action="store_true", help="a new certificate even if an identical one is current"
    )
    issue.set_defaults(run=cmd_issue)

    ca = commands.add_parser("ca", help="print the CA certificates (PEM)")
    ca.add_argument("--authority", help="kubernetes-ca, etcd-ca or front-proxy-ca")
    shown = ca.add_mutually_exclusive_group()
    shown.add_argument(
        "--hash", action="store_true", help="print kubeadm-style SPKI hashes instead"
    )
    shown.add_argument(
        "--bundle",
        action="store_true",
        help="the trust bundle: every generation the CA publishes (old and new in a rotation)",
    )
    shown.add_argument(
        "--cross",
        action="store_true",
        help="the issuing CA certificate cross-signed by the generation before it, if any",
    )
    shown.add_argument(
        "--info", action="store_true", help="issuing key, its provenance, bundle size, expiry"
    )
    ca.set_defaults(run=cmd_ca)

    profiles = commands.add_parser("profiles", help="list the profiles the service issues")
    profiles.add_argument(
        "-o", "--output", choices=["table", "json"], default="table", help="default: table"
    )
    profiles.set_defaults(run=cmd_profiles)
