"""kubeca token create, list, revoke: one-time bootstrap tokens for new nodes."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from kubeca_client.cli.common import connect, parse_duration
from kubeca_client.names import parse_dns_name, parse_ip


def cmd_token_create(args: argparse.Namespace) -> int:
    profiles = [p.strip() for value in args.profiles for p in value.split(",") if p.strip()]
    addresses = [str(parse_ip(a, "--address")) for a in args.address]
    ttl = int(parse_duration(args.ttl).total_seconds()) if args.ttl else 0
    with connect(args) as client:
        created = client.create_bootstrap_token(
            profiles, parse_dns_name(args.node_name, "--node-name"), addresses, ttl
        )
    if args.output == "json":
        print(
            json.dumps(
                {
                    "token": created.token,
                    "token_id": created.token_id,
                    "expires": created.expires.isoformat(),
                    "ca_cert_hash": created.ca_cert_hash,
                }
            )
        )
    else:
        print(created.token)
        print(
            f"token {created.token_id} expires {created.expires:%Y-%m-%d %H:%M}Z; "
            f"give the node the token (in a file) and --ca-cert-hash {created.ca_cert_hash}",
            file=sys.stderr,
        )
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    with connect(args) as client:
        # Page after page, each printed as it arrives.
        tokens = client.bootstrap_tokens()
        print(f"{'ID':<8}{'NODE':<24}{'PROFILES':<34}{'USED':<34}{'EXPIRES':<18}STATE")
        for t in tokens:
            state = (
                "revoked"
                if t.revoked
                else ("used" if set(t.used_profiles) >= set(t.profiles) else "valid")
            )
            print(
                f"{t.token_id:<8}{t.node_name:<24}{','.join(t.profiles):<34}"
                f"{','.join(t.used_profiles) or '-':<34}{t.expires:%Y-%m-%d %H:%M}  {state}"
            )
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    with connect(args) as client:
        client.revoke_bootstrap_token(args.token_id)
    print(f"revoked bootstrap token {args.token_id}")
    return 0


def add_commands(commands: Any) -> None:
    token = commands.add_parser("token", help="one-time bootstrap tokens for nodes")
    token_actions = token.add_subparsers(dest="action", required=True)
    create = token_actions.add_parser("create", help="a token bound to one node")
    create.add_argument("--profiles", action="append", required=True, metavar="P[,P...]")
    create.add_argument("--node-name", required=True)
    create.add_argument("--address", action="append", default=[], help="an IP the node may name")
    create.add_argument("--ttl", help="validity, e.g. 1h (default 1h, at most 24h)")
    create.add_argument("-o", "--output", choices=["text", "json"], default="text")
    create.set_defaults(run=cmd_token_create)
    listing = token_actions.add_parser("list", help="tokens not yet expired")
    listing.set_defaults(run=cmd_token_list)
    revoke = token_actions.add_parser("revoke", help="make a token unusable")
    revoke.add_argument("token_id")
    revoke.set_defaults(run=cmd_token_revoke)
