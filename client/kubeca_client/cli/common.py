"""What every kubeca command shares: argument parsing helpers and the connection."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from kubeca_client.client import Client
from kubeca_client.config import ClientConfig, load_client_config, split_addresses
from kubeca_client.errors import ConfigError, InvalidArgument
from kubeca_client.keys import KeyAlgorithm
from kubeca_client.slots import Report
from kubeca_client.trust import parse_pin

CONFIG_ENV = "KUBECA_CLIENT_CONFIG"
TOKEN_ENV = "KUBECA_BOOTSTRAP_TOKEN"  # noqa: S105  # a variable's name, not a secret
_DURATION = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str) -> timedelta:
    """'90d', '12h', '1h30m', '600s'."""
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise InvalidArgument(f"{text!r} is not a duration like 90d, 12h, 30m or 600s")
    total = timedelta()
    try:
        for number, unit in parts:
            total += timedelta(**{_UNITS[unit]: int(number)})
    except OverflowError:
        raise InvalidArgument(f"{text!r} is longer than any certificate may live") from None
    if total <= timedelta(0):
        raise InvalidArgument(f"{text!r} is not a positive duration")
    return total


def _not_utf8(text: str) -> bool:
    # argv bytes that are not UTF-8 arrive as lone surrogates, which gRPC cannot send.
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


def parse_params(items: Sequence[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise InvalidArgument(f"--param {item!r} must be NAME=VALUE")
        if name in params:
            raise InvalidArgument(f"--param {name} is given twice")
        if not (name + value).isprintable() or _not_utf8(name + value):
            raise InvalidArgument(f"--param {name!r}: the value is not printable UTF-8 text")
        params[name] = value
    return params


def writable_target(path: Path, flag: str) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InvalidArgument(f"{flag}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InvalidArgument(f"{flag}: directory {parent} is not writable")
    if path.is_dir():
        raise InvalidArgument(f"{flag}: {path} is a directory")


def bootstrap_token(args: argparse.Namespace) -> str | None:
    """A bootstrap token from --token-file or the environment; never from argv."""
    path: Path | None = getattr(args, "token_file", None)
    if path is not None:
        try:
            token = path.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidArgument(f"--token-file: cannot read {path}: {exc}") from None
        if not token:
            raise InvalidArgument(f"--token-file: {path} is empty")
        return token
    return os.environ.get(TOKEN_ENV) or None


def connect(args: argparse.Namespace) -> Client:
    token = bootstrap_token(args)
    server = getattr(args, "server", None)
    if server:
        # Bootstrap mode: a node with a token and the service CA's hash, nothing else.
        pin = getattr(args, "ca_cert_hash", None)
        if not pin:
            raise InvalidArgument("--server needs --ca-cert-hash sha256:... to trust the service")
        if token is None:
            raise InvalidArgument(f"--server needs a bootstrap token: --token-file or ${TOKEN_ENV}")
        addresses = split_addresses(server, "--server")
        config = ClientConfig(addresses=addresses, ca_cert_hash=parse_pin(pin))
        return Client.from_config(config, token=token)
    path = args.config or os.environ.get(CONFIG_ENV)
    if not path:
        raise ConfigError(f"no client config: pass --config FILE or set {CONFIG_ENV}")
    return Client.from_config(load_client_config(Path(path)), token=token)


def lifetime_seconds(args: argparse.Namespace) -> int:
    return int(parse_duration(args.lifetime).total_seconds()) if args.lifetime else 0


def key_algorithm(args: argparse.Namespace) -> KeyAlgorithm:
    try:
        return KeyAlgorithm.parse(args.key_algorithm)
    except ValueError as exc:
        raise InvalidArgument(f"--key-algorithm: {exc}") from None


def print_report(report: Report, root: Path) -> None:
    for line in report.lines(root):
        print(line)


def add_layout_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir",
        type=Path,
        required=True,
        help="the kubeconfig directory kubeadm uses (e.g. /etc/kubernetes); "
        "certificates and keys go under its pki/",
    )
    parser.add_argument(
        "--key-algorithm",
        default=KeyAlgorithm.ECDSA_P256.value,
        help="for new keys: ECDSA-P256 (default), ECDSA-P384, RSA-2048, RSA-3072, RSA-4096",
    )
    parser.add_argument("--lifetime", help="certificate lifetime, e.g. 90d (default: 365d)")
