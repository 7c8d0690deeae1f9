"""kubeca signer-proxy: kube-apiserver's ExternalJWTSigner socket, forwarded to kubeca."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from kubeca_client.cli.common import connect
from kubeca_client.errors import InvalidArgument
from kubeca_client.signer_proxy import DEFAULT_DEADLINE_SECONDS, SignerProxy, serve

MODES = {"0600": 0o600, "0660": 0o660}


def cmd_signer_proxy(args: argparse.Namespace) -> int:
    if not 0.1 <= args.deadline_seconds <= 9:
        # A token request waits on Sign in kube-apiserver, which gives its own first
        # Metadata call 10 s: a forwarded call must end well before that.
        raise InvalidArgument("--deadline-seconds must be between 0.1 and 9")
    mode = MODES[args.socket_mode]
    if mode == 0o660 and not args.socket_group:
        raise InvalidArgument("--socket-mode 0660 needs --socket-group")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with connect(args) as client:
        proxy = SignerProxy(client.channels, deadline=args.deadline_seconds)
        server = serve(proxy, args.socket, mode, args.socket_group)
        print(
            f"kubeca signer-proxy: serving ExternalJWTSigner (v1, v1alpha1) on {args.socket}, "
            f"forwarding to {', '.join(client.addresses)}",
            file=sys.stderr,
            flush=True,
        )
        stop.wait()
        server.stop(2).wait()
    return 0


def add_commands(commands: Any) -> None:
    proxy = commands.add_parser(
        "signer-proxy",
        help="serve kube-apiserver's --service-account-signing-endpoint socket, signing "
        "through the kubeca service (needs a grant with service_account_signing)",
    )
    proxy.add_argument("--socket", type=Path, required=True, help="the socket to listen on")
    proxy.add_argument(
        "--socket-mode",
        choices=sorted(MODES),
        default="0600",
        help="who may connect: 0600 (this user) or 0660 (and --socket-group)",
    )
    proxy.add_argument("--socket-group", help="the socket's group (with --socket-mode 0660)")
    proxy.add_argument(
        "--deadline-seconds",
        type=float,
        default=DEFAULT_DEADLINE_SECONDS,
        help=f"how long a forwarded call may take (default {DEFAULT_DEADLINE_SECONDS:g})",
    )
    proxy.set_defaults(run=cmd_signer_proxy)
