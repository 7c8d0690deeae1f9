"""ephemeral "kubeca_certificate" (Terraform 1.10+): the certificate, never in plan or state.

Opened on every plan and apply, so it asks idempotently: the service returns the same
certificate for the same request until it enters its renewal window. Pass its values
only to other ephemeral or write-only places (a provider block, a write-only argument),
as with any ephemeral value.
"""

from __future__ import annotations

from datetime import datetime

import attrs
from pyvider.ephemerals import (
    BaseEphemeralResource,
    EphemeralResourceContext,
    register_ephemeral_resource,
)
from pyvider.exceptions import ResourceError
from pyvider.resources.private_state import PrivateState
from pyvider.schema import PvsSchema, s_resource

from kubeca_client.client import Client, IssuedCertificate
from kubeca_client.errors import KubecaError
from kubeca_client.tfprovider import checks
from kubeca_client.tfprovider.certificate import (
    issued_attributes,
    issued_values,
    request_attributes,
)
from kubeca_client.tfprovider.provider import call


@attrs.define(frozen=True)
class EphemeralConfig:
    profile: str | None = None
    csr_pem: str | None = None
    parameters: dict[str, str] | None = None
    lifetime: str | None = None


@attrs.define(frozen=True)
class EphemeralResult:
    profile: str | None = None
    csr_pem: str | None = None
    parameters: dict[str, str] | None = None
    lifetime: str | None = None
    cert_pem: str | None = None
    ca_pem: str | None = None
    serial: str | None = None
    authority: str | None = None
    fingerprint_sha256: str | None = None
    not_before: str | None = None
    not_after: str | None = None


@attrs.define(frozen=True)
class EphemeralPrivate(PrivateState):
    not_after: str = ""


@register_ephemeral_resource("kubeca_certificate")
class EphemeralCertificate(
    BaseEphemeralResource[EphemeralResult, EphemeralPrivate, EphemeralConfig]
):
    config_class = EphemeralConfig
    result_class = EphemeralResult
    private_state_class = EphemeralPrivate

    @classmethod
    def get_schema(cls) -> PvsSchema:
        return s_resource({**request_attributes(replace=False), **issued_attributes()})

    async def validate(self, config: EphemeralConfig | None) -> list[str]:
        if config is None:
            return []
        return checks.offline_problems(
            csr_pem=config.csr_pem,
            parameters=config.parameters,
            lifetime=config.lifetime,
            renew_before=None,
            revocation_reason=None,
        )

    async def open(
        self,
        ctx: EphemeralResourceContext[EphemeralConfig, None],  # type: ignore[type-var]
    ) -> tuple[EphemeralResult, EphemeralPrivate, datetime]:
        config = ctx.config
        assert config is not None and config.profile and config.csr_pem
        profile, csr = config.profile, config.csr_pem.encode()
        parameters = dict(config.parameters or {})
        try:
            lifetime = (
                checks.duration_seconds(config.lifetime, "lifetime") if config.lifetime else 0
            )

            def work(client: Client) -> IssuedCertificate:
                return client.issue_certificate(profile, csr, parameters, lifetime)

            issued = await call(work)
        except KubecaError as exc:
            error = ResourceError(f"{exc.status}: {exc.message}")
            error.add_context("terraform.summary", f"kubeca refused to issue {profile}")
            raise error from None
        values = issued_values(issued)
        result = EphemeralResult(
            profile=config.profile,
            csr_pem=config.csr_pem,
            parameters=config.parameters,
            lifetime=config.lifetime,
            **values,
        )
        # Terraform renews at this time only if the run lasts that long; the
        # certificate is what it is until then.
        return result, EphemeralPrivate(not_after=values["not_after"]), issued.not_after

    async def renew(
        self, ctx: EphemeralResourceContext[None, EphemeralPrivate]
    ) -> tuple[EphemeralPrivate, datetime]:
        # Terraform asks only when a run outlives the certificate (renew_at is its
        # not_after): a certificate cannot be extended, and the next run opens a new one.
        private = ctx.private_state
        expired = private.not_after if private is not None else "before this run ended"
        error = ResourceError(f"the certificate expired at {expired}, during this run")
        error.add_context("terraform.summary", "kubeca certificate expired; run again")
        raise error

    async def close(self, ctx: EphemeralResourceContext[None, EphemeralPrivate]) -> None:
        return None
