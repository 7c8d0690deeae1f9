"""kubeca.v1.CertificateAuthority: a table of handlers, each a request message to a call
into the domain and back to a response message. No policy here, and nothing that
every method shares (decoding, errors, audit, metrics): ``methods`` does that once.
"""

from __future__ import annotations

from typing import Any

from kubeca_client._proto.kubeca.v1 import kubeca_pb2 as pb
from kubeca_client.errors import InvalidArgument
from kubeca_client.revocation import parse_reason
from kubeca_client.text import clip

from kubeca_server.api import messages
from kubeca_server.api.caller import tls_caller
from kubeca_server.api.methods import Method, Service
from kubeca_server.ca.crl import CRLPublisher
from kubeca_server.ca.registry import CARegistry
from kubeca_server.issuance.inventory import Inventory
from kubeca_server.issuance.model import Caller, IssueRequest
from kubeca_server.issuance.pipeline import IssuancePipeline
from kubeca_server.issuance.token_admin import TokenAdmin
from kubeca_server.issuance.tokens import TokenRequest
from kubeca_server.metrics import Metrics
from kubeca_server.profiles import EKU_NAMES, LEAF_KEY_USAGES, PROFILES

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CertificateAuthority"].full_name


def _issue_request(request: pb.IssueCertificateRequest) -> IssueRequest:
    return IssueRequest(
        profile=request.profile,
        csr=request.csr,
        parameters=dict(request.parameters),
        lifetime=messages.duration(request.lifetime_seconds),
        force_new=request.force_new,
    )


def _token_request(request: pb.CreateBootstrapTokenRequest) -> TokenRequest:
    return TokenRequest(
        profiles=list(request.profiles),
        node_name=request.node_name,
        addresses=list(request.addresses),
        ttl=messages.duration(request.ttl_seconds),
    )


def _profile_label(request: pb.IssueCertificateRequest) -> str:
    # Only known profile names become labels: a hostile name must not grow the number
    # of time series without bound.
    if not request.profile:
        return ""
    return request.profile if request.profile in PROFILES else "unknown"


class CAHandlers:
    """The handlers, over the domain objects the composition root built."""

    def __init__(
        self,
        pipeline: IssuancePipeline,
        registry: CARegistry,
        inventory: Inventory,
        tokens: TokenAdmin,
        crls: CRLPublisher,
        metrics: Metrics,
    ) -> None:
        self._metrics = metrics
        self._pipeline = pipeline
        self._registry = registry
        self._inventory = inventory
        self._tokens = tokens
        self._crls = crls

    def issue(
        self, request: pb.IssueCertificateRequest, caller: Caller
    ) -> pb.IssueCertificateResponse:
        issued = self._pipeline.issue(caller, _issue_request(request))
        self._metrics.issued(issued.profile.name, issued.authority, issued.reused)
        certificate = issued.certificate
        return pb.IssueCertificateResponse(
            certificate_pem=issued.certificate_pem,
            ca_certificate_pem=issued.generation.certificate_pem,
            ca_bundle_pem=self._registry.get(issued.generation.authority).bundle_pem,
            serial=issued.serial_hex,
            not_before=messages.timestamp(certificate.not_valid_before_utc),
            not_after=messages.timestamp(certificate.not_valid_after_utc),
            fingerprint_sha256=issued.fingerprint_sha256,
            authority=issued.authority,
            reused=issued.reused,
        )

    def ca_certificates(
        self, request: pb.GetCACertificatesRequest, caller: Caller
    ) -> pb.GetCACertificatesResponse:
        # Anyone may read the CA certificates: they are what a node must trust.
        authorities = (
            [self._registry.get(request.authority)]
            if request.authority
            else self._registry.cluster()
        )
        return pb.GetCACertificatesResponse(
            authorities=[
                pb.CACertificate(
                    authority=ca.name,
                    certificate_pem=ca.issuing.certificate_pem,
                    ca_cert_hash=ca.issuing.ca_cert_hash,
                    not_after=messages.timestamp(ca.issuing.not_after),
                    bundle_pem=ca.bundle_pem,
                    issuing_key_id=ca.issuing.key_id_hex,
                    cross_certificate_pem=ca.issuing.cross_certificate_pem,
                    key_provenance=ca.issuing.provenance.value,
                )
                for ca in authorities
            ]
        )

    def profiles(self, request: pb.ListProfilesRequest, caller: Caller) -> pb.ListProfilesResponse:
        profiles = []
        for view in self._pipeline.profiles(caller):
            p = view.profile
            profiles.append(
                pb.Profile(
                    name=p.name,
                    authority=p.authority,
                    common_name=p.common_name,
                    organizations=list(p.organizations),
                    key_usages=list(LEAF_KEY_USAGES),
                    extended_key_usages=[EKU_NAMES[eku] for eku in p.extended_key_usages],
                    san_rule=p.san_rule,
                    parameters=[
                        pb.ProfileParameter(
                            name=param.name,
                            description=param.description,
                            required=param in p.required,
                            default_value=param.default,
                        )
                        for param in p.parameters
                    ],
                    default_lifetime_seconds=int(view.default_lifetime.total_seconds()),
                    max_lifetime_seconds=int(view.max_lifetime.total_seconds()),
                    enabled=view.enabled,
                )
            )
        return pb.ListProfilesResponse(profiles=profiles)

    def create_token(
        self, request: pb.CreateBootstrapTokenRequest, caller: Caller
    ) -> pb.CreateBootstrapTokenResponse:
        token, record = self._tokens.create(caller, _token_request(request))
        return pb.CreateBootstrapTokenResponse(
            token=token,
            token_id=record.token_id,
            expires=messages.timestamp(record.expires_at),
            ca_cert_hash=self._registry.service.issuing.ca_cert_hash,
        )

    def list_tokens(
        self, request: pb.ListBootstrapTokensRequest, caller: Caller
    ) -> pb.ListBootstrapTokensResponse:
        page = self._tokens.page(caller, request.page_token, request.page_size)
        return pb.ListBootstrapTokensResponse(
            tokens=[messages.bootstrap_token(r) for r in page.tokens],
            next_page_token=page.next_token,
        )

    def revoke_token(
        self, request: pb.RevokeBootstrapTokenRequest, caller: Caller
    ) -> pb.RevokeBootstrapTokenResponse:
        self._tokens.revoke(caller, request.token_id)
        return pb.RevokeBootstrapTokenResponse()

    def revoke(
        self, request: pb.RevokeCertificateRequest, caller: Caller
    ) -> pb.RevokeCertificateResponse:
        row, published = self._inventory.revoke(
            caller, request.serial, parse_reason(request.reason)
        )
        assert row.revoked_at is not None
        return pb.RevokeCertificateResponse(
            revoked_at=messages.timestamp(row.revoked_at),
            authority=row.authority,
            crl_number=published.number,
        )

    def crl(self, request: pb.GetCRLRequest, caller: Caller) -> pb.GetCRLResponse:
        # Anyone may read a CRL: it is what a relying party must check.
        crl = self._crls.current(request.authority)
        return pb.GetCRLResponse(
            crl_der=crl.der,
            crl_number=crl.number,
            this_update=messages.timestamp(crl.this_update),
            next_update=messages.timestamp(crl.next_update),
        )

    def certificates(
        self, request: pb.ListCertificatesRequest, caller: Caller
    ) -> pb.ListCertificatesResponse:
        if request.expiring_within_seconds < 0:
            raise InvalidArgument("expiring_within_seconds must not be negative")
        query = self._inventory.query(
            request.authority,
            request.profile,
            messages.duration(request.expiring_within_seconds),
            request.revoked_only,
        )
        page = self._inventory.page(caller, query, request.page_token, request.page_size)
        return pb.ListCertificatesResponse(
            certificates=[messages.certificate_record(r) for r in page.rows],
            next_page_token=page.next_token,
        )


def _issue_fields(request: pb.IssueCertificateRequest) -> dict[str, Any]:
    return _issue_request(request).fields()


def _token_fields(request: pb.CreateBootstrapTokenRequest) -> dict[str, Any]:
    return _token_request(request).fields()


def ca_service(handlers: CAHandlers) -> Service:
    return Service(
        SERVICE_NAME,
        (
            Method(
                "IssueCertificate",
                pb.IssueCertificateRequest,
                pb.IssueCertificateResponse,
                handlers.issue,
                "certificate.refused",
                _issue_fields,
                _profile_label,
            ),
            Method(
                "GetCACertificates",
                pb.GetCACertificatesRequest,
                pb.GetCACertificatesResponse,
                handlers.ca_certificates,
                describe=lambda r: {"authority": clip(r.authority, 64)},
            ),
            Method(
                "ListProfiles",
                pb.ListProfilesRequest,
                pb.ListProfilesResponse,
                handlers.profiles,
            ),
            Method(
                "CreateBootstrapToken",
                pb.CreateBootstrapTokenRequest,
                pb.CreateBootstrapTokenResponse,
                handlers.create_token,
                "token.create.refused",
                _token_fields,
            ),
            Method(
                "ListBootstrapTokens",
                pb.ListBootstrapTokensRequest,
                pb.ListBootstrapTokensResponse,
                handlers.list_tokens,
                "token.list.refused",
            ),
            Method(
                "RevokeBootstrapToken",
                pb.RevokeBootstrapTokenRequest,
                pb.RevokeBootstrapTokenResponse,
                handlers.revoke_token,
                "token.revoke.refused",
                lambda r: {"token_id": clip(r.token_id, 16)},
            ),
            Method(
                "RevokeCertificate",
                pb.RevokeCertificateRequest,
                pb.RevokeCertificateResponse,
                handlers.revoke,
                "certificate.revoke_refused",
                lambda r: {"serial": clip(r.serial, 64)},
            ),
            Method(
                "GetCRL",
                pb.GetCRLRequest,
                pb.GetCRLResponse,
                handlers.crl,
                describe=lambda r: {"authority": clip(r.authority, 64)},
            ),
            Method(
                "ListCertificates",
                pb.ListCertificatesRequest,
                pb.ListCertificatesResponse,
                handlers.certificates,
            ),
        ),
        tls_caller,
    )
