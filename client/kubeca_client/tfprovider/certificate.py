"""resource "kubeca_certificate": one certificate for one CSR, renewed through the plan.

Like hashicorp/tls's tls_locally_signed_cert: every refresh recomputes
`ready_for_renewal`, and once the certificate is inside its renewal window the next
plan replaces the resource (a new certificate for the same CSR). `renew_before`
(like its `early_renewal_hours`) sets the window; by default it is the last third of the
certificate's life, where kubeca itself renews. Destroy revokes only when
`revoke_on_destroy` is true. The state holds the CSR and public certificates only.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import attrs
from pyvider.resources import BaseResource, ResourceContext, register_resource
from pyvider.schema import PvsSchema, a_bool, a_map, a_str, a_unknown, s_resource

from kubeca_client.client import Client, IssuedCertificate
from kubeca_client.errors import InvalidArgument, KubecaError
from kubeca_client.revocation import help_text, parse_reason
from kubeca_client.tfprovider import checks
from kubeca_client.tfprovider.provider import call

COMPUTED = ("cert_pem", "ca_pem", "serial", "authority", "fingerprint_sha256")
TIMES = ("not_before", "not_after")
DEFAULT_REVOCATION_REASON = "cessation_of_operation"


@attrs.define(frozen=True)
class CertificateConfig:
    profile: str | None = None
    csr_pem: str | None = None
    parameters: dict[str, str] | None = None
    lifetime: str | None = None
    renew_before: str | None = None
    revoke_on_destroy: bool | None = None
    revocation_reason: str | None = None


@attrs.define(frozen=True)
class CertificateState:
    profile: str | None = None
    csr_pem: str | None = None
    parameters: dict[str, str] | None = None
    lifetime: str | None = None
    renew_before: str | None = None
    revoke_on_destroy: bool | None = None
    revocation_reason: str | None = None
    cert_pem: str | None = None
    ca_pem: str | None = None
    serial: str | None = None
    authority: str | None = None
    fingerprint_sha256: str | None = None
    not_before: str | None = None
    not_after: str | None = None
    ready_for_renewal: bool | None = None


def request_attributes(*, replace: bool) -> dict[str, Any]:
    """The inputs of an issuance, shared with the ephemeral resource."""
    return {
        "profile": a_str(
            required=True,
            requires_replace=replace,
            description="The profile to issue (see `kubeca profiles`), e.g. etcd-server.",
        ),
        "csr_pem": a_str(
            required=True,
            requires_replace=replace,
            description="The CSR, PEM (e.g. tls_cert_request.cert_request_pem). Its key "
            "stays where it was made.",
        ),
        "parameters": a_map(
            a_str(),
            optional=True,
            requires_replace=replace,
            description='The profile\'s parameters, e.g. { node_name = "cp-1" }.',
        ),
        "lifetime": a_str(
            optional=True,
            requires_replace=replace,
            description="Requested lifetime, e.g. 24h or 90d (default: the profile's).",
        ),
    }


def issued_attributes() -> dict[str, Any]:
    return {
        "cert_pem": a_str(computed=True, description="The certificate, PEM."),
        "ca_pem": a_str(computed=True, description="The issuing CA's certificate, PEM."),
        "serial": a_str(computed=True, description="The serial number, hex."),
        "authority": a_str(computed=True, description="The issuing CA, e.g. etcd-ca."),
        "fingerprint_sha256": a_str(computed=True, description="SHA-256 of the DER, hex."),
        "not_before": a_str(computed=True, description="Validity start (RFC 3339)."),
        "not_after": a_str(computed=True, description="Validity end (RFC 3339)."),
    }


def issued_values(issued: IssuedCertificate) -> dict[str, Any]:
    return {
        "cert_pem": issued.certificate_pem,
        "ca_pem": issued.ca_certificate_pem,
        "serial": issued.serial,
        "authority": issued.authority,
        "fingerprint_sha256": issued.fingerprint_sha256,
        "not_before": checks.rfc3339(issued.not_before),
        "not_after": checks.rfc3339(issued.not_after),
    }


def known_text(ctx: ResourceContext[Any, Any, Any], name: str, value: str | None) -> str | None:
    """The value, or None while Terraform does not know it yet (e.g. a CSR made in the
    same plan): those are checked on the plan or apply that knows them."""
    return None if value is None or ctx.is_field_unknown(name) else value


async def check_with_service(
    ctx: ResourceContext[Any, Any, Any], profile: str | None, parameters: dict[str, str] | None
) -> None:
    """The profile and its parameters as the service offers them, at plan time."""
    if profile is None or ctx.is_field_unknown("parameters"):
        return
    try:
        offered = await call(lambda client: client.profiles())
    except KubecaError as exc:
        ctx.add_error("kubeca service could not list its profiles", exc.message)
        return
    for problem in checks.profile_problems(offered, profile, parameters or {}):
        ctx.add_error("Invalid kubeca certificate request", problem)


async def issue(
    ctx: ResourceContext[Any, Any, Any], config: Any, *, force_new: bool
) -> IssuedCertificate | None:
    """One issuance; a refusal becomes an error diagnostic carrying the service's words."""
    assert config.profile is not None and config.csr_pem is not None
    lifetime = checks.duration_seconds(config.lifetime, "lifetime") if config.lifetime else 0

    def work(client: Client) -> IssuedCertificate:
        return client.issue_certificate(
            config.profile,
            config.csr_pem.encode(),
            dict(config.parameters or {}),
            lifetime,
            force_new=force_new,
        )

    try:
        return await call(work)
    except KubecaError as exc:
        ctx.add_error(f"kubeca refused to issue {config.profile}", f"{exc.status}: {exc.message}")
        return None


def due(state: CertificateState, now: datetime) -> bool:
    if state.not_before is None or state.not_after is None:
        return False
    renew_before = (
        timedelta(seconds=checks.duration_seconds(state.renew_before, "renew_before"))
        if state.renew_before
        else None
    )
    return checks.renewal_due(
        checks.parse_rfc3339(state.not_before),
        checks.parse_rfc3339(state.not_after),
        now,
        renew_before,
    )


@register_resource("kubeca_certificate")
class Certificate(BaseResource[Literal["kubeca_certificate"], CertificateState, CertificateConfig]):
    config_class = CertificateConfig
    state_class = CertificateState

    @classmethod
    def get_schema(cls) -> PvsSchema:
        return s_resource(
            {
                **request_attributes(replace=True),
                "renew_before": a_str(
                    optional=True,
                    description="Plan a replacement this long before not_after, e.g. 720h "
                    "(default: the last third of the certificate's life).",
                ),
                "revoke_on_destroy": a_bool(
                    optional=True,
                    description="Revoke the certificate when the resource is destroyed or "
                    "replaced (default false). The operator's grant needs revoke = true.",
                ),
                "revocation_reason": a_str(
                    optional=True,
                    description=f"The reason revoke_on_destroy gives: {help_text()} "
                    "(default cessationOfOperation).",
                ),
                **issued_attributes(),
                "ready_for_renewal": a_bool(
                    computed=True,
                    description="True once the certificate is inside its renewal window; "
                    "the next plan then replaces it.",
                ),
            }
        )

    async def _validate_config(self, config: CertificateConfig) -> list[str]:
        return checks.offline_problems(
            csr_pem=config.csr_pem,
            parameters=config.parameters,
            lifetime=config.lifetime,
            renew_before=config.renew_before,
            revocation_reason=config.revocation_reason,
        )

    async def _create(
        self, ctx: ResourceContext[Any, Any, Any], base_plan: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, None]:
        config = ctx.config
        assert config is not None
        await check_with_service(ctx, known_text(ctx, "profile", config.profile), config.parameters)
        for name in (*COMPUTED, *TIMES):
            base_plan[name] = a_unknown(a_str())
        base_plan["ready_for_renewal"] = False
        return base_plan, None

    async def _update(
        self, ctx: ResourceContext[Any, Any, Any], base_plan: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, None]:
        # Only renew_before, revoke_on_destroy and revocation_reason change in place;
        # everything else requires a replacement, planned as a create.
        prior = ctx.state
        assert isinstance(prior, CertificateState)
        planned_window = base_plan.get("renew_before")
        # Unknown until apply (from another resource): judge by the window in state.
        renewed = (
            attrs.evolve(prior, renew_before=planned_window)
            if planned_window is None or isinstance(planned_window, str)
            else prior
        )
        if prior.ready_for_renewal or due(renewed, datetime.now(UTC)):
            # Terraform replaces only for a path whose value changes: ready_for_renewal
            # goes true -> false after a refresh found it due, and cert_pem becomes
            # unknown when it is due only now (-refresh=false, or a new renew_before).
            ctx.require_replace("ready_for_renewal")
            ctx.require_replace("cert_pem")
            for name in (*COMPUTED, *TIMES):
                base_plan[name] = a_unknown(a_str())
        base_plan["ready_for_renewal"] = False
        return base_plan, None

    async def _create_apply(
        self, ctx: ResourceContext[Any, Any, Any]
    ) -> tuple[CertificateState | None, None]:
        config, planned = ctx.config, ctx.planned_state
        assert config is not None and isinstance(planned, CertificateState)
        # A resource's create is a new certificate, even for a CSR seen before: the
        # replacement that renews it must not get the old one back.
        issued = await issue(ctx, config, force_new=True)
        if issued is None:
            return None, None
        return attrs.evolve(planned, **issued_values(issued), ready_for_renewal=False), None

    async def read(self, ctx: ResourceContext[Any, Any, Any]) -> CertificateState | None:
        state = ctx.state
        if not isinstance(state, CertificateState):
            return None
        return attrs.evolve(state, ready_for_renewal=due(state, datetime.now(UTC)))

    async def _delete_apply(self, ctx: ResourceContext[Any, Any, Any]) -> None:
        state = ctx.state
        if not isinstance(state, CertificateState) or not state.revoke_on_destroy:
            return
        serial = state.serial
        assert serial is not None
        reason = parse_reason(state.revocation_reason or DEFAULT_REVOCATION_REASON)
        try:
            await call(lambda client: client.revoke_certificate(serial, reason))
        except InvalidArgument as exc:
            if "revoked already" not in exc.message:
                ctx.add_error(f"kubeca refused to revoke {serial}", exc.message)
                return
            ctx.add_warning(f"{serial} was revoked already", exc.message)
        except KubecaError as exc:
            ctx.add_error(f"kubeca refused to revoke {serial}", f"{exc.status}: {exc.message}")
