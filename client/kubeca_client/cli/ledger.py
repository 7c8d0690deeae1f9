"""kubeca revoke, crl, certs list: what the CA issued, and taking it back."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from kubeca_client.cli.common import connect, parse_duration
from kubeca_client.client import CertificateRecord
from kubeca_client.files import PUBLIC, atomic_write
from kubeca_client.revocation import help_text, parse_reason


def cmd_revoke(args: argparse.Namespace) -> int:
    with connect(args) as client:
        # Parsed here too, so a misspelt reason fails before anything is sent.
        revoked = client.revoke_certificate(args.serial, parse_reason(args.reason))
    print(
        f"revoked {args.serial} ({revoked.authority}); CRL number {revoked.crl_number} published. "
        "etcd enforces it once it reads the new CRL; kube-apiserver checks no CRL at all"
    )
    return 0


def cmd_crl(args: argparse.Namespace) -> int:
    with connect(args) as client:
        crl = client.crl(args.authority)
    atomic_write(args.out, crl.der, PUBLIC)
    print(
        f"wrote {args.out}: {args.authority} CRL number {crl.number} (DER), "
        f"next update {crl.next_update:%Y-%m-%d %H:%M}Z"
    )
    return 0


def _record_json(r: CertificateRecord) -> str:
    return json.dumps(
        {
            "serial": r.serial,
            "authority": r.authority,
            "profile": r.profile,
            "subject": r.subject,
            "sans": list(r.sans),
            "not_before": r.not_before.isoformat(),
            "not_after": r.not_after.isoformat(),
            "caller": r.caller,
            "revoked": r.revoked,
            "revoked_at": r.revoked_at.isoformat() if r.revoked_at else None,
            "revocation_reason": r.revocation_reason or None,
            "fingerprint_sha256": r.fingerprint_sha256,
        }
    )


def cmd_certs_list(args: argparse.Namespace) -> int:
    """Prints each page as it arrives: an inventory of any size, in bounded memory."""
    within = (
        int(parse_duration(args.expiring_within).total_seconds()) if args.expiring_within else 0
    )
    with connect(args) as client:
        records = client.certificates(
            args.authority or "", args.profile or "", within, args.revoked
        )
        if args.output == "json":
            # One JSON array, written element by element.
            separator = "[\n"
            for r in records:
                sys.stdout.write(separator + "  " + _record_json(r))
                separator = ",\n"
            print("[]" if separator == "[\n" else "\n]")
            return 0
        print(f"{'SERIAL':<34}{'CA':<18}{'PROFILE':<26}{'CALLER':<22}{'EXPIRES':<18}STATE")
        for r in records:
            state = f"revoked ({r.revocation_reason})" if r.revoked else "valid"
            print(
                f"{r.serial:<34}{r.authority:<18}{r.profile:<26}{r.caller[:21]:<22}"
                f"{r.not_after:%Y-%m-%d %H:%M}  {state}"
            )
    return 0


def add_commands(commands: Any) -> None:
    revoke = commands.add_parser("revoke", help="revoke an issued certificate (operators)")
    revoke.add_argument("--serial", required=True, help="hex, as issue printed it")
    revoke.add_argument(
        "--reason",
        default="unspecified",
        help=f"why, as RFC 5280 names it, any case: {help_text()}; or snake case "
        "(key_compromise); default unspecified",
    )
    revoke.set_defaults(run=cmd_revoke)

    crl = commands.add_parser("crl", help="fetch a CA's current CRL (DER)")
    crl.add_argument("--authority", required=True, help="kubernetes-ca, etcd-ca or front-proxy-ca")
    crl.add_argument("--out", type=Path, required=True, help="write the CRL (DER) here")
    crl.set_defaults(run=cmd_crl)

    certs = commands.add_parser("certs", help="the inventory of issued certificates")
    actions = certs.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="what was issued, to whom, when it expires")
    listing.add_argument("--authority", help="only this CA's certificates")
    listing.add_argument("--profile", help="only this profile's certificates")
    listing.add_argument("--expiring-within", help="e.g. 30d")
    listing.add_argument("--revoked", action="store_true", help="only revoked certificates")
    listing.add_argument(
        "-o", "--output", choices=["table", "json"], default="table", help="default: table"
    )
    listing.set_defaults(run=cmd_certs_list)
