"""The client's TOML configuration: where the service is, how to trust it, who we are.

    address = "kubeca.example.com:7443"   # the operator port (mutual TLS), or replicas:
    # address = ["kubeca-1.example.com:7443", "kubeca-2.example.com:7443"]
    timeout_seconds = 10
    ca_file = "service-ca.crt"            # trust the service CA in this file, or
    # ca_cert_hash = "sha256:..."         # pin it by the hash of its public key
    cert_file = "client.crt"              # this operator's identity
    key_file = "client.key"

Relative paths are resolved from the config file's directory. With several addresses,
calls go to the first that answers and stay there; a replica that answers UNAVAILABLE
(or cannot be reached) is left for the next, within the call's timeout. A refusal is
the service's answer and is never asked again elsewhere.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from kubeca_client.errors import ConfigError, InvalidArgument

DEFAULT_TIMEOUT_SECONDS = 10.0
MAX_ADDRESSES = 16
KEYS = ("address", "timeout_seconds", "ca_file", "ca_cert_hash", "cert_file", "key_file")


@dataclass(frozen=True)
class ClientConfig:
    addresses: tuple[str, ...]  # replicas of one service, in the order to try them
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    ca_file: Path | None = None
    ca_cert_hash: str | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @property
    def address(self) -> str:
        """The first address: where a single-server deployment is."""
        return self.addresses[0]


def parse_addresses(value: object, what: str) -> tuple[str, ...]:
    """HOST:PORT, or a list of them (replicas); each once."""
    items = [value] if isinstance(value, str) else value
    if (
        not isinstance(items, list)
        or not items
        or len(items) > MAX_ADDRESSES
        or not all(isinstance(a, str) and ":" in a and a.strip() == a for a in items)
    ):
        raise ConfigError(
            f"{what} must be HOST:PORT or a list of 1 to {MAX_ADDRESSES} of them (replicas)"
        )
    if len(set(items)) != len(items):
        raise ConfigError(f"{what} names one address twice")
    return tuple(items)


def load_client_config(path: Path) -> ClientConfig:
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read client config {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"client config {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r} (known: {', '.join(KEYS)})")
    addresses = parse_addresses(raw.get("address"), f"{path}: address")
    timeout = raw.get("timeout_seconds", DEFAULT_TIMEOUT_SECONDS)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 600:
        raise ConfigError(f"{path}: timeout_seconds must be a number of seconds, 0 < t <= 600")

    def file(key: str) -> Path | None:
        value = raw.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{path}: {key} must be a file path")
        candidate = Path(value)
        return candidate if candidate.is_absolute() else path.parent / candidate

    pin = raw.get("ca_cert_hash")
    if pin is not None and not isinstance(pin, str):
        raise ConfigError(f"{path}: ca_cert_hash must be a string like sha256:<hex>")
    config = ClientConfig(
        addresses=addresses,
        timeout_seconds=float(timeout),
        ca_file=file("ca_file"),
        ca_cert_hash=pin,
        cert_file=file("cert_file"),
        key_file=file("key_file"),
    )
    if (config.ca_file is None) == (config.ca_cert_hash is None):
        raise ConfigError(f"{path}: set exactly one of ca_file and ca_cert_hash")
    if (config.cert_file is None) != (config.key_file is None):
        raise ConfigError(f"{path}: cert_file and key_file go together")
    return config


def split_addresses(text: str, key: str) -> tuple[str, ...]:
    """One HOST:PORT, or replicas separated by commas (where a value is one string: a
    command-line flag, a Terraform query or provider attribute)."""
    try:
        return parse_addresses([part.strip() for part in text.split(",")], key)
    except ConfigError as exc:
        raise InvalidArgument(exc.message) from None


def resolve_connection(
    *,
    address: str | None,
    client_config: Path | None,
    ca_file: Path | None,
    ca_cert_hash: str | None,
    cert_file: Path | None,
    key_file: Path | None,
    timeout_seconds: float,
    address_key: str = "address",
) -> ClientConfig:
    """The connection as Terraform users give it (the external program's query, the
    provider block): a client config file, or its fields one by one, not both."""
    from kubeca_client.trust import parse_pin

    if client_config is not None:
        given = [
            name
            for name, value in (
                ("ca_file", ca_file),
                ("ca_cert_hash", ca_cert_hash),
                ("cert_file", cert_file),
                ("key_file", key_file),
            )
            if value
        ]
        if given:
            # Two sources of trust must not meet silently: a pin beside a config file
            # would otherwise be ignored.
            raise InvalidArgument(
                f"client_config already says how to trust and whom to present; "
                f"remove {', '.join(given)}, or client_config"
            )
        loaded = load_client_config(client_config)
        return ClientConfig(
            addresses=split_addresses(address, address_key) if address else loaded.addresses,
            timeout_seconds=min(timeout_seconds, loaded.timeout_seconds),
            ca_file=loaded.ca_file,
            ca_cert_hash=loaded.ca_cert_hash,
            cert_file=loaded.cert_file,
            key_file=loaded.key_file,
        )
    if not address or ":" not in address:
        raise InvalidArgument(
            f"{address_key} must be HOST:PORT, or replicas as HOST:PORT,HOST:PORT "
            "(or give client_config)"
        )
    if bool(ca_file) == bool(ca_cert_hash):
        raise InvalidArgument("give exactly one of ca_file and ca_cert_hash")
    if not cert_file or not key_file:
        raise InvalidArgument("cert_file and key_file (the operator's credentials) are required")
    return ClientConfig(
        addresses=split_addresses(address, address_key),
        timeout_seconds=timeout_seconds,
        ca_file=ca_file,
        ca_cert_hash=parse_pin(ca_cert_hash, "ca_cert_hash") if ca_cert_hash else None,
        cert_file=cert_file,
        key_file=key_file,
    )
