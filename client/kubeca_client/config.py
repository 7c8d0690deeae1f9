"""The client's TOML configuration: where the service is and how long to wait.

address = "127.0.0.1:7443"
timeout_seconds = 10
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from kubeca_client.errors import ConfigError

DEFAULT_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class ClientConfig:
    address: str
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS


def load_client_config(path: Path) -> ClientConfig:
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read client config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"client config {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(raw) - {"address", "timeout_seconds"})
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r} (known: address, timeout_seconds)")
    address = raw.get("address")
    if not isinstance(address, str) or ":" not in address:
        raise ConfigError(f"{path}: address must be HOST:PORT")
    timeout = raw.get("timeout_seconds", DEFAULT_TIMEOUT_SECONDS)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 600:
        raise ConfigError(f"{path}: timeout_seconds must be a number of seconds, 0 < t <= 600")
    return ClientConfig(address=address, timeout_seconds=float(timeout))
