"""The provider block: where the service is, how to trust it, who we are.

    provider "kubeca" {
      client_config = "/etc/kubeca/client.toml"   # or the fields one by one:
      # address = "kubeca.example.com:7443"
      # ca_file = "service-ca.crt"  |  ca_cert_hash = "sha256:..."
      # cert_file = "operator.crt"
      # key_file  = "operator.key"
      # timeout_seconds = 30
    }

With none of them set, $KUBECA_CLIENT_CONFIG names the client config, as for the CLI.
Every field is a path or a public pin: the operator's key stays in its file and never
enters Terraform's configuration or state.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pyvider.common.utils.attrs_factory import create_attrs_class_from_schema
from pyvider.exceptions import ProviderConfigurationError
from pyvider.providers import BaseProvider, ProviderMetadata, register_provider
from pyvider.schema import a_num, a_str, s_provider

from kubeca_client.cli.common import CONFIG_ENV
from kubeca_client.client import Client
from kubeca_client.config import ClientConfig, resolve_connection
from kubeca_client.errors import ConfigError, KubecaError
from kubeca_client.tfprovider.install import provider_version

DEFAULT_TIMEOUT_SECONDS = 30.0
MAX_TIMEOUT_SECONDS = 300.0
T = TypeVar("T")


ATTRIBUTES = {
    "client_config": a_str(
        optional=True,
        description="Path of a kubeca client config (TOML), instead of the fields below. "
        f"Default: ${CONFIG_ENV} when no field is set.",
    ),
    "address": a_str(
        optional=True, description="HOST:PORT of the operator port, or replicas: HOST:PORT,..."
    ),
    "ca_file": a_str(optional=True, description="The service CA certificate file."),
    "ca_cert_hash": a_str(
        optional=True, description="sha256:<hex> pin of the service CA, instead of ca_file."
    ),
    "cert_file": a_str(optional=True, description="The operator's client certificate file."),
    "key_file": a_str(
        optional=True, description="The operator's client key file (read, never stored)."
    ),
    "timeout_seconds": a_num(
        optional=True,
        description=f"Bound on each call to the service (default {DEFAULT_TIMEOUT_SECONDS:g}).",
    ),
}

_connection: ClientConfig | None = None


def refusal(summary: str, exc: KubecaError) -> ProviderConfigurationError:
    """An error Terraform shows with our summary and the message, not as a provider bug."""
    error = ProviderConfigurationError(exc.message)
    error.add_context("terraform.summary", summary)
    return error


def connection_from(config: Any) -> ClientConfig:
    """The provider block's fields (an attrs instance; None for an empty block)."""

    def text(name: str) -> str | None:
        value = getattr(config, name, None) if config is not None else None
        return str(value) if value not in (None, "") else None

    def path(name: str) -> Path | None:
        value = text(name)
        return Path(value) if value else None

    given = [name for name in ATTRIBUTES if text(name) is not None]
    client_config = path("client_config")
    if not given:
        from_env = os.environ.get(CONFIG_ENV)
        if not from_env:
            raise ConfigError(
                f"the kubeca provider needs client_config or address and its fields "
                f"(or ${CONFIG_ENV} naming a client config)"
            )
        client_config = Path(from_env)
    timeout = DEFAULT_TIMEOUT_SECONDS
    if text("timeout_seconds") is not None:
        timeout = float(getattr(config, "timeout_seconds"))  # noqa: B009  # an attrs field
        if not 0 < timeout <= MAX_TIMEOUT_SECONDS:
            raise ConfigError(f"timeout_seconds must be in (0, {MAX_TIMEOUT_SECONDS:g}]")
    return resolve_connection(
        address=text("address"),
        client_config=client_config,
        ca_file=path("ca_file"),
        ca_cert_hash=text("ca_cert_hash"),
        cert_file=path("cert_file"),
        key_file=path("key_file"),
        timeout_seconds=timeout,
    )


def connection() -> ClientConfig:
    if _connection is None:
        raise ConfigError("the kubeca provider was used before it was configured")
    return _connection


async def call(work: Callable[[Client], T]) -> T:
    """One use of the service, off the event loop (the client is synchronous gRPC)."""

    def run() -> T:
        with Client.from_config(connection()) as client:
            return work(client)

    return await asyncio.to_thread(run)


@register_provider("kubeca")
class KubecaProvider(BaseProvider):
    """The kubeca provider: certificates from an HSM-backed CA, by CSR."""

    def __init__(self) -> None:
        super().__init__(metadata=ProviderMetadata(name="kubeca", version=provider_version()))

    async def setup(self) -> None:
        await super().setup()
        # Our own block, not one composed from pyvider capabilities.
        self._final_schema = s_provider(attributes=ATTRIBUTES)
        self.config_class = create_attrs_class_from_schema(
            "KubecaProviderConfig", self._final_schema.block.attributes
        )

    async def configure(self, config: Any) -> None:
        global _connection  # noqa: PLW0603  # one provider per plugin process
        try:
            resolved = connection_from(config)
        except KubecaError as exc:
            raise refusal("Invalid kubeca provider configuration", exc) from None
        await super().configure(config)
        _connection = resolved
