"""kubeca token create, list, revoke: one-time bootstrap tokens for new nodes."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from typing import Any

from kubeca_client.cli.common import TOKEN_ENV, connect, parse_duration
from kubeca_client.client import CreatedToken
from kubeca_client.errors import InvalidArgument
from kubeca_client.names import parse_dns_name, parse_endpoint_host, parse_ip


def join_command(
    args: argparse.Namespace, created: CreatedToken, addresses: Sequence[str]
) -> str | None:
    """What the node runs, as `kubeadm token create --print-join-command` prints it, or
    None without --bootstrap-server and --control-plane-endpoint (nothing to guess them
    from). The token goes in the environment: argv is readable by every local user."""
    if not args.bootstrap_server or not args.control_plane_endpoint:
        return None
    words = [
        "kubeca",
        "pki",
        "worker",
        "--server",
        args.bootstrap_server,
        "--ca-cert-hash",
        created.ca_cert_hash,
        "--node-name",
        args.node_name,
        *(["--address", addresses[0]] if addresses else []),
        "--control-plane-endpoint",
        args.control_plane_endpoint,
        "--dir",
        "/etc/kubernetes",
    ]
    return f"{TOKEN_ENV}={shlex.quote(created.token)} " + shlex.join(words)


def cmd_token_create(args: argparse.Namespace) -> int:
    profiles = [p.strip() for value in args.profiles for p in value.split(",") if p.strip()]
    addresses = [str(parse_ip(a, "--address")) for a in args.address]
    ttl = int(parse_duration(args.ttl).total_seconds()) if args.ttl else 0
    if args.bootstrap_server and ":" not in args.bootstrap_server:
        raise InvalidArgument("--bootstrap-server must be HOST:PORT")
    if args.control_plane_endpoint:
        parse_endpoint_host(args.control_plane_endpoint, "--control-plane-endpoint")
    with connect(args) as client:
        created = client.create_bootstrap_token(
            profiles, parse_dns_name(args.node_name, "--node-name"), addresses, ttl
        )
    join = join_command(args, created, addresses)
    if args.output == "json":
        print(
            json.dumps(
                {
                    "token": created.token,
                    "token_id": created.token_id,
                    "expires": created.expires.isoformat(),
                    "ca_cert_hash": created.ca_cert_hash,
                    "join_command": join,
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
        if join:
            print(f"on the node: {join}", file=sys.stderr)
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
    create.add_argument(
        "--profiles",
        action="append",
        required=True,
        metavar="P[,P...]",
        help="the profiles the token may issue, each once (repeatable)",
    )
    create.add_argument("--node-name", required=True, help="the one node the token is for")
    create.add_argument("--address", action="append", default=[], help="an IP the node may name")
    create.add_argument("--ttl", help="validity, e.g. 1h (default 1h, at most 24h)")
    create.add_argument(
        "--bootstrap-server",
        metavar="HOST:PORT",
        help="the service's bootstrap address as the node reaches it: shown in the join command",
    )
    create.add_argument(
        "--control-plane-endpoint",
        metavar="HOST[:PORT]",
        help="the API server the node's kubeconfig names, for the join command",
    )
    create.add_argument(
        "-o",
        "--output",
        choices=["text", "json"],
        default="text",
        help="text: the token on stdout, the rest on stderr; json: one object with the "
        "token, its hash pin and the join command",
    )
    create.set_defaults(run=cmd_token_create)
    listing = token_actions.add_parser("list", help="tokens not yet expired")
    listing.set_defaults(run=cmd_token_list)
    revoke = token_actions.add_parser("revoke", help="make a token unusable")
    revoke.add_argument("token_id", help="the token's id (the part before the dot)")
    revoke.set_defaults(run=cmd_token_revoke)
