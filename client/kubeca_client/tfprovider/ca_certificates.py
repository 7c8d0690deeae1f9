"""data "kubeca_ca_certificates": each CA's certificate and its kubeadm hash.

Maps keyed by CA name (kubernetes-ca, etcd-ca, front-proxy-ca), so a configuration
reads `data.kubeca_ca_certificates.all.certificate_pem["etcd-ca"]`; `trust_bundle` is
every PEM in one string, and `ca_cert_hash` is what `kubeadm join
--discovery-token-ca-cert-hash` takes.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs
from pyvider.data_sources import BaseDataSource, register_data_source
from pyvider.exceptions import DataSourceError
from pyvider.resources import ResourceContext
from pyvider.schema import PvsSchema, a_map, a_str, s_data_source

from kubeca_client.client import CACertificate
from kubeca_client.errors import KubecaError
from kubeca_client.tfprovider import checks
from kubeca_client.tfprovider.provider import call


@attrs.define(frozen=True)
class CAConfig:
    authority: str | None = None


@attrs.define(frozen=True)
class CAState:
    authority: str | None = None
    certificate_pem: dict[str, str] | None = None
    ca_cert_hash: dict[str, str] | None = None
    not_after: dict[str, str] | None = None
    trust_bundle: str | None = None


@register_data_source("kubeca_ca_certificates")
class CACertificates(BaseDataSource[Literal["kubeca_ca_certificates"], CAState, CAConfig]):
    config_class = CAConfig
    state_class = CAState

    @classmethod
    def get_schema(cls) -> PvsSchema:
        return s_data_source(
            {
                "authority": a_str(
                    optional=True, description="Only this CA (default: every cluster CA)."
                ),
                "certificate_pem": a_map(a_str(), computed=True, description="PEM by CA."),
                "ca_cert_hash": a_map(
                    a_str(), computed=True, description="sha256:<hex> of each CA's public key."
                ),
                "not_after": a_map(
                    a_str(), computed=True, description="Each CA's expiry (RFC 3339)."
                ),
                "trust_bundle": a_str(computed=True, description="Every PEM, concatenated."),
            }
        )

    async def _validate_config(self, config: CAConfig) -> list[str]:
        return []

    async def read(self, ctx: ResourceContext[Any, Any, Any]) -> CAState:
        config = ctx.config
        authority = (config.authority if config is not None else None) or ""
        try:
            found: list[CACertificate] = await call(
                lambda client: client.ca_certificates(authority)
            )
        except KubecaError as exc:
            error = DataSourceError(f"{exc.status}: {exc.message}")
            error.add_context("terraform.summary", "kubeca could not list its CA certificates")
            raise error from None
        return CAState(
            authority=authority or None,
            certificate_pem={ca.authority: ca.certificate_pem for ca in found},
            ca_cert_hash={ca.authority: ca.ca_cert_hash for ca in found},
            not_after={ca.authority: checks.rfc3339(ca.not_after) for ca in found},
            trust_bundle="".join(ca.certificate_pem for ca in found),
        )
