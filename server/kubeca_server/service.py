"""The gRPC servicer: decode, identify the caller, call the authority, map errors.

No policy here. Errors of the shared taxonomy become their status code with their
message; anything else becomes INTERNAL with a fixed message and an incident id,
while the traceback goes to the server log only.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import NoReturn

import grpc
import structlog
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health, health_pb2
from kubeca_client._proto.kubeca.v1 import kubeca_pb2 as pb
from kubeca_client._proto.kubeca.v1 import kubeca_pb2_grpc as pb_grpc
from kubeca_client.errors import InvalidArgument, KubecaError, Unauthenticated, Unavailable

from kubeca_server.authority import ANONYMOUS, OPERATOR, TOKEN, Authority, Caller, IssueRequest
from kubeca_server.crl import CRLPublisher, parse_reason
from kubeca_server.metrics import Metrics
from kubeca_server.profiles import EKU_NAMES, LEAF_KEY_USAGES, PROFILES
from kubeca_server.store import CertificateRow, TokenRecord
from kubeca_server.token_admin import TokenAdmin
from kubeca_server.tokens import TokenRequest

log = structlog.get_logger("kubeca.service")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CertificateAuthority"].full_name
# Past this, a lifetime is simply "too long"; clamping keeps it inside timedelta's range
# and leaves the judgement to the authority.
LIFETIME_CLAMP_SECONDS = 1000 * 365 * 24 * 3600


def _lifetime(seconds: int) -> timedelta | None:
    if seconds == 0:
        return None
    return timedelta(seconds=max(min(seconds, LIFETIME_CLAMP_SECONDS), -1))


def _caller(context: grpc.ServicerContext) -> Caller:
    """Who is calling: an operator's verified client certificate, else a bootstrap
    token in the authorization metadata, else nobody.

    gRPC verified the certificate chain to the service CA during the handshake (the
    operator port requires it); the certificate must also be one made for clients.
    """
    peer = context.peer()
    # grpcio gives each auth property as a list of bytes (its stubs say bytes).
    pems: list[bytes] = list(context.auth_context().get("x509_pem_cert", []))  # type: ignore[arg-type]
    if pems:
        certificate = x509.load_pem_x509_certificate(pems[0])
        try:
            usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            usages = x509.ExtendedKeyUsage([])
        names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if ExtendedKeyUsageOID.CLIENT_AUTH not in usages or not names:
            raise Unauthenticated("the client certificate is not an operator certificate")
        return Caller(identity=str(names[0].value), peer=peer, kind=OPERATOR)
    for key, value in context.invocation_metadata():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            token = value.removeprefix("Bearer ").strip()
            return Caller(f"token:{token.split('.')[0][:6]}", peer, TOKEN, token)
    return Caller(identity="anonymous", peer=peer, kind=ANONYMOUS)


def _timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


class HealthMonitor:
    """Keeps grpc.health.v1 in step with the HSM: NOT_SERVING while it is unreachable."""

    def __init__(
        self,
        probe: Callable[[], None],
        on_change: Callable[[bool], None] = lambda serving: None,
        interval: float = 5.0,
    ) -> None:
        self.servicer = health.HealthServicer()
        self._probe = probe
        self._on_change = on_change
        self._interval = interval
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hsm-health", daemon=True)
        self._serving: bool | None = None

    def start(self) -> None:
        self.check()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def join(self) -> None:
        """Wait for the probe thread, so nothing touches the HSM after this returns."""
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def recheck_soon(self) -> None:
        self._wake.set()

    def check(self) -> None:
        try:
            self._probe()
        except KubecaError as exc:
            self._set(False, exc.message)
        except Exception as exc:
            # Whatever broke, the HSM is not known to work: say so, and keep probing.
            log.exception("health.probe_failed")
            self._set(False, type(exc).__name__)
        else:
            self._set(True, "")

    def _set(self, serving: bool, reason: str) -> None:
        if serving == self._serving:
            return
        self._serving = serving
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            self.servicer.set(name, status)
        self._on_change(serving)
        if serving:
            log.info("health.serving")
        else:
            log.error("health.not_serving", reason=reason)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            if not self._stop.is_set():
                self.check()


class CertificateAuthorityService(pb_grpc.CertificateAuthorityServicer):
    def __init__(
        self,
        authority: Authority,
        tokens: TokenAdmin,
        crls: CRLPublisher,
        health_monitor: HealthMonitor,
        service_ca_hash: str,
        metrics: Metrics,
    ) -> None:
        self._metrics = metrics
        self._authority = authority
        self._tokens = tokens
        self._crls = crls
        self._health = health_monitor
        self._service_ca_hash = service_ca_hash

    @contextmanager
    def _mapped_errors(
        self, context: grpc.ServicerContext, method: str, profile: str = ""
    ) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        except KubecaError as exc:
            if isinstance(exc, Unavailable):
                self._health.recheck_soon()
            if not getattr(exc, "kubeca_audited", False):
                self._audit_refusal(context, method, exc)
            # Only known profile names become labels: a hostile name must not grow the
            # number of time series without bound.
            label = profile if profile in PROFILES else ("" if not profile else "unknown")
            self._metrics.refused(method, label, exc.status)
            _abort(context, grpc.StatusCode[exc.status], exc.message)
        except Exception:
            self._metrics.refused(method, "", "INTERNAL")
            incident = secrets.token_hex(6)
            log.exception("rpc.internal_error", method=method, incident=incident)
            _abort(
                context,
                grpc.StatusCode.INTERNAL,
                f"internal error (incident {incident}); the details are in the server log",
            )
        finally:
            self._metrics.request(method, time.perf_counter() - started)

    def _audit_refusal(
        self, context: grpc.ServicerContext, method: str, error: KubecaError
    ) -> None:
        """Refusals decided here or in reads still leave their audit record."""
        try:
            caller = _caller(context)
        except KubecaError:
            caller = Caller("unidentified", context.peer(), ANONYMOUS)
        try:
            self._authority.record_refusal(caller, method, error)
        except KubecaError:
            log.error("audit.refusal_not_recorded", method=method, status=error.status)

    def refuse_undecodable(
        self, method: str, error: InvalidArgument, context: grpc.ServicerContext
    ) -> NoReturn:
        with self._mapped_errors(context, method):
            raise error
        raise AssertionError("unreachable: _mapped_errors aborts")

    def IssueCertificate(
        self, request: pb.IssueCertificateRequest, context: grpc.ServicerContext
    ) -> pb.IssueCertificateResponse:
        with self._mapped_errors(context, "IssueCertificate", request.profile):
            issued = self._authority.issue(
                _caller(context),
                IssueRequest(
                    profile=request.profile,
                    csr=request.csr,
                    parameters=dict(request.parameters),
                    lifetime=_lifetime(request.lifetime_seconds),
                    force_new=request.force_new,
                ),
            )
            certificate = issued.certificate
            self._metrics.issued(issued.profile.name, issued.authority.name, issued.reused)
            return pb.IssueCertificateResponse(
                certificate_pem=issued.certificate_pem,
                ca_certificate_pem=issued.authority.certificate_pem,
                serial=issued.serial_hex,
                not_before=_timestamp(certificate.not_valid_before_utc),
                not_after=_timestamp(certificate.not_valid_after_utc),
                fingerprint_sha256=issued.fingerprint_sha256,
                authority=issued.authority.name,
                reused=issued.reused,
            )
        raise AssertionError("unreachable: _mapped_errors aborts")

    def GetCACertificates(
        self, request: pb.GetCACertificatesRequest, context: grpc.ServicerContext
    ) -> pb.GetCACertificatesResponse:
        with self._mapped_errors(context, "GetCACertificates"):
            return pb.GetCACertificatesResponse(
                authorities=[
                    pb.CACertificate(
                        authority=ca.name,
                        certificate_pem=ca.certificate_pem,
                        ca_cert_hash=ca.ca_cert_hash,
                        not_after=_timestamp(ca.certificate.not_valid_after_utc),
                    )
                    for ca in self._authority.ca_certificates(request.authority)
                ]
            )
        raise AssertionError("unreachable: _mapped_errors aborts")

    def ListProfiles(
        self, request: pb.ListProfilesRequest, context: grpc.ServicerContext
    ) -> pb.ListProfilesResponse:
        with self._mapped_errors(context, "ListProfiles"):
            profiles = []
            for view in self._authority.profiles(_caller(context)):
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
        raise AssertionError("unreachable: _mapped_errors aborts")

    def CreateBootstrapToken(
        self, request: pb.CreateBootstrapTokenRequest, context: grpc.ServicerContext
    ) -> pb.CreateBootstrapTokenResponse:
        with self._mapped_errors(context, "CreateBootstrapToken"):
            token, record = self._tokens.create(
                _caller(context),
                TokenRequest(
                    profiles=list(request.profiles),
                    node_name=request.node_name,
                    addresses=list(request.addresses),
                    ttl=_lifetime(request.ttl_seconds),
                ),
            )
            return pb.CreateBootstrapTokenResponse(
                token=token,
                token_id=record.token_id,
                expires=_timestamp(record.expires_at),
                ca_cert_hash=self._service_ca_hash,
            )
        raise AssertionError("unreachable: _mapped_errors aborts")

    def ListBootstrapTokens(
        self, request: pb.ListBootstrapTokensRequest, context: grpc.ServicerContext
    ) -> pb.ListBootstrapTokensResponse:
        with self._mapped_errors(context, "ListBootstrapTokens"):
            records = self._tokens.list(_caller(context))
            return pb.ListBootstrapTokensResponse(tokens=[_token_message(r) for r in records])
        raise AssertionError("unreachable: _mapped_errors aborts")

    def RevokeBootstrapToken(
        self, request: pb.RevokeBootstrapTokenRequest, context: grpc.ServicerContext
    ) -> pb.RevokeBootstrapTokenResponse:
        with self._mapped_errors(context, "RevokeBootstrapToken"):
            self._tokens.revoke(_caller(context), request.token_id)
            return pb.RevokeBootstrapTokenResponse()
        raise AssertionError("unreachable: _mapped_errors aborts")

    def RevokeCertificate(
        self, request: pb.RevokeCertificateRequest, context: grpc.ServicerContext
    ) -> pb.RevokeCertificateResponse:
        with self._mapped_errors(context, "RevokeCertificate"):
            row = self._authority.revoke(
                _caller(context), request.serial, parse_reason(request.reason)
            )
            assert row.revoked_at is not None
            published = self._crls.publish(row.authority)
            return pb.RevokeCertificateResponse(
                revoked_at=_timestamp(row.revoked_at),
                authority=row.authority,
                crl_number=published.number,
            )
        raise AssertionError("unreachable: _mapped_errors aborts")

    def GetCRL(self, request: pb.GetCRLRequest, context: grpc.ServicerContext) -> pb.GetCRLResponse:
        with self._mapped_errors(context, "GetCRL"):
            # Anyone may read a CRL: it is what a relying party must check.
            crl = self._crls.current(request.authority)
            return pb.GetCRLResponse(
                crl_der=crl.der,
                crl_number=crl.number,
                this_update=_timestamp(crl.this_update),
                next_update=_timestamp(crl.next_update),
            )
        raise AssertionError("unreachable: _mapped_errors aborts")

    def ListCertificates(
        self, request: pb.ListCertificatesRequest, context: grpc.ServicerContext
    ) -> pb.ListCertificatesResponse:
        with self._mapped_errors(context, "ListCertificates"):
            if request.expiring_within_seconds < 0:
                raise InvalidArgument("expiring_within_seconds must not be negative")
            rows = self._authority.certificates(
                _caller(context),
                request.authority,
                request.profile,
                _lifetime(request.expiring_within_seconds),
                request.revoked_only,
            )
            return pb.ListCertificatesResponse(certificates=[_certificate_message(r) for r in rows])
        raise AssertionError("unreachable: _mapped_errors aborts")


Handler = Callable[[Message, grpc.ServicerContext], Message]


def add_to_server(service: CertificateAuthorityService, server: grpc.Server) -> None:
    """Register the API, decoding requests in the handler rather than in grpcio.

    grpcio answers a request it cannot deserialize with INTERNAL; bytes that are not
    a valid request are the caller's fault, so the handlers take raw bytes and refuse
    undecodable ones with INVALID_ARGUMENT, audited like any other refusal.
    """
    descriptor = pb.DESCRIPTOR.services_by_name["CertificateAuthority"]
    handlers = {}
    for method in descriptor.methods:
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            _decoding(
                service,
                method.name,
                getattr(service, method.name),
                GetMessageClass(method.input_type),
            ),
            request_deserializer=None,
            response_serializer=GetMessageClass(method.output_type).SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(descriptor.full_name, handlers),)
    )


def _decoding(
    service: CertificateAuthorityService,
    name: str,
    handler: Handler,
    request_class: type[Message],
) -> Callable[[bytes, grpc.ServicerContext], Message]:
    def decode_then_handle(raw: bytes, context: grpc.ServicerContext) -> Message:
        try:
            request = request_class.FromString(raw)
        except DecodeError:
            error = InvalidArgument(
                f"the request is not a valid {request_class.DESCRIPTOR.full_name} message"
            )
            service.refuse_undecodable(name, error, context)
        return handler(request, context)

    return decode_then_handle


def _certificate_message(row: CertificateRow) -> pb.CertificateRecord:
    message = pb.CertificateRecord(
        serial=row.serial,
        authority=row.authority,
        profile=row.profile,
        subject=row.subject,
        sans=list(row.sans),
        not_before=_timestamp(row.not_before),
        not_after=_timestamp(row.not_after),
        caller=row.caller,
        revoked=row.revoked_at is not None,
        revocation_reason=row.revocation_reason or "",
        fingerprint_sha256=row.fingerprint_sha256,
    )
    if row.revoked_at is not None:
        message.revoked_at.CopyFrom(_timestamp(row.revoked_at))
    return message


def _token_message(record: TokenRecord) -> pb.BootstrapToken:
    return pb.BootstrapToken(
        token_id=record.token_id,
        profiles=list(record.profiles),
        node_name=record.node_name,
        addresses=list(record.addresses),
        expires=_timestamp(record.expires_at),
        created_by=record.created_by,
        used_profiles=list(record.used_profiles),
        revoked=record.revoked,
    )


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("context.abort returned")
