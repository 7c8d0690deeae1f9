"""A typed client over the generated stub.

Every call has a deadline (a bootstrap script must never hang), and every
``grpc.RpcError`` becomes the shared error taxonomy here, in one place.

Given several addresses (replicas of one service), a call goes to the replica that
answered last and, when that one is UNAVAILABLE (down, unreachable, or without its
HSM or database), to the next, round after round, until the call's deadline. Any other
answer, a refusal above all, is the service's decision and is never asked again
elsewhere: a PERMISSION_DENIED retried on another replica would only be a second
refusal in the ledger, and a retried INVALID_ARGUMENT the same mistake twice.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from kubeca_client._proto.externaljwt.v1 import externaljwt_pb2 as jwt_pb
from kubeca_client._proto.externaljwt.v1 import externaljwt_pb2_grpc as jwt_grpc
from kubeca_client._proto.kubeca.v1 import kubeca_pb2 as pb
from kubeca_client._proto.kubeca.v1 import kubeca_pb2_grpc as pb_grpc
from kubeca_client.config import DEFAULT_TIMEOUT_SECONDS, ClientConfig
from kubeca_client.errors import (
    BY_STATUS,
    ConfigError,
    DeadlineExceeded,
    FailedPrecondition,
    InternalError,
    InvalidArgument,
    KubecaError,
    Unauthenticated,
    Unavailable,
)
from kubeca_client.keys import spki_der
from kubeca_client.text import excerpt
from kubeca_client.trust import pinned_ca

# Between rounds over every replica, all of them UNAVAILABLE: a short pause.
RETRY_PAUSE_SECONDS = 0.2
Stub = pb_grpc.CertificateAuthorityStub
_T = TypeVar("_T")


@dataclass(frozen=True)
class IssuedCertificate:
    certificate_pem: str
    ca_certificate_pem: str
    serial: str
    not_before: datetime
    not_after: datetime
    fingerprint_sha256: str
    authority: str
    reused: bool = False
    # The CA's trust bundle (old and new during a rotation): what CA files should hold.
    ca_bundle_pem: str = ""

    @property
    def trust_pem(self) -> str:
        """The bundle, or the signing CA alone from a server that sends no bundle."""
        return self.ca_bundle_pem or self.ca_certificate_pem

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.certificate_pem.encode())


@dataclass(frozen=True)
class ServiceAccountKey:
    key_id: str
    public_der: bytes  # SubjectPublicKeyInfo


@dataclass(frozen=True)
class CACertificate:
    authority: str
    certificate_pem: str
    ca_cert_hash: str
    not_after: datetime
    bundle_pem: str = ""  # every published generation, the issuing one first
    issuing_key_id: str = ""  # hex SubjectKeyIdentifier of the issuing generation
    cross_certificate_pem: str = ""
    key_provenance: str = ""  # "generated" or "imported"

    @property
    def trust_pem(self) -> str:
        """What a CA file should hold: the bundle (the issuing certificate from a
        server that sends none)."""
        return self.bundle_pem or self.certificate_pem


@dataclass(frozen=True)
class RevokedCertificate:
    revoked_at: datetime
    authority: str
    crl_number: int


@dataclass(frozen=True)
class CRL:
    der: bytes
    number: int
    this_update: datetime
    next_update: datetime


@dataclass(frozen=True)
class CertificateRecord:
    serial: str
    authority: str
    profile: str
    subject: str
    sans: tuple[str, ...]
    not_before: datetime
    not_after: datetime
    caller: str
    revoked: bool
    revoked_at: datetime | None
    revocation_reason: str
    fingerprint_sha256: str


@dataclass(frozen=True)
class CreatedToken:
    token: str
    token_id: str
    expires: datetime
    ca_cert_hash: str


@dataclass(frozen=True)
class BootstrapToken:
    token_id: str
    profiles: tuple[str, ...]
    node_name: str
    addresses: tuple[str, ...]
    expires: datetime
    created_by: str
    used_profiles: tuple[str, ...]
    revoked: bool


@dataclass(frozen=True)
class ProfileParameter:
    name: str
    description: str
    required: bool
    default_value: str


@dataclass(frozen=True)
class ProfileInfo:
    name: str
    authority: str
    common_name: str
    organizations: tuple[str, ...]
    key_usages: tuple[str, ...]
    extended_key_usages: tuple[str, ...]
    san_rule: str
    parameters: tuple[ProfileParameter, ...]
    default_lifetime_seconds: int
    max_lifetime_seconds: int
    enabled: bool


def channel_credentials(
    ca_pem: bytes, cert_pem: bytes | None = None, key_pem: bytes | None = None
) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem
    )


def _read(path: Path, key: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from None
    except ValueError:  # a NUL byte: no file can have that name
        raise ConfigError(f"{key}: {excerpt(str(path))} is not a file path") from None


def _check_issued(csr: bytes, issued: IssuedCertificate) -> None:
    """Refuse what the service returned unless it certifies our key under its CA."""
    try:
        request = (
            x509.load_pem_x509_csr(csr)
            if csr.lstrip().startswith(b"-----")
            else x509.load_der_x509_csr(csr)
        )
        certificate = issued.certificate
        ca = x509.load_pem_x509_certificate(issued.ca_certificate_pem.encode())
        same_key = spki_der(certificate) == spki_der(request)
        certificate.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise InternalError(f"the service returned an unusable certificate ({exc})") from None
    if not same_key:
        raise InternalError("the service returned a certificate for a different key")


def _utc(stamp: object) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)  # type: ignore[attr-defined, no-any-return]


def _tls_refused(details: str) -> bool:
    # Words of the transport, not of a status the service sent: its own UNAVAILABLE
    # may well say "certificate" ("the HSM's keys do not match the CA certificates").
    text = details.lower()
    transport = "socket closed" in text or "handshake" in text or "ssl" in text
    return transport or ("certificate" in text and "failed to connect" in text)


# gRPC's default cap on a message a channel receives, unless channel_options set one.
DEFAULT_RECEIVE_LIMIT = 4 * 1024 * 1024
_TOO_LARGE = re.compile(r"larger than max \((\d+) vs\. (\d+)\)")


def _too_large(details: str, address: str, receive_limit: int) -> KubecaError:
    """RESOURCE_EXHAUSTED is the same words for a request the server would not take and
    an answer this client would not take; the limit it names tells which."""
    found = _TOO_LARGE.search(details)
    if found is not None and int(found.group(2)) == receive_limit:
        return FailedPrecondition(
            f"the answer of the kubeca service at {address} is {found.group(1)} bytes, more "
            f"than this client accepts ({receive_limit} bytes); ask for less at a time"
        )
    return InvalidArgument(f"request refused as too large: {details}")


def error_from_rpc(
    error: grpc.RpcError, address: str, receive_limit: int = DEFAULT_RECEIVE_LIMIT
) -> KubecaError:
    """The taxonomy's error for a failed call; the one place that reads status codes."""
    code: grpc.StatusCode = error.code()
    details: str = error.details() or code.name
    if code == grpc.StatusCode.UNAVAILABLE and _tls_refused(details):
        # TLS 1.3 reports a rejected client certificate only as the server closing the
        # connection right after the handshake; gRPC passes that on as UNAVAILABLE.
        return Unauthenticated(
            f"kubeca service at {address} closed the TLS connection: its operator port "
            "needs a client certificate from the service CA (cert_file, key_file), and a "
            f"node without one uses the bootstrap port with a token ({details})"
        )
    if code == grpc.StatusCode.UNAVAILABLE:
        return Unavailable(f"kubeca service at {address} is unavailable: {details}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"kubeca service at {address} did not answer in time")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return _too_large(details, address, receive_limit)
    return BY_STATUS.get(code.name, InternalError)(details)


class Client:
    def __init__(
        self,
        addresses: str | Sequence[str],
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        channel_options: Sequence[tuple[str, int | str]] = (),
        *,
        credentials: grpc.ChannelCredentials,
        token: str | None = None,
    ) -> None:
        """A client over TLS to one server or to replicas of one service (tried in
        order, see the module's doc). ``token`` is a bootstrap token sent with every
        call; ``channel_options`` are gRPC channel arguments, e.g. to keep a connection
        of its own: clients in one process otherwise share one connection, and so one
        server worker."""
        self.addresses = (addresses,) if isinstance(addresses, str) else tuple(addresses)
        if not self.addresses:
            raise ConfigError("a client needs at least one address")
        self.timeout = timeout_seconds
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._receive_limit = int(
            dict(channel_options).get("grpc.max_receive_message_length", DEFAULT_RECEIVE_LIMIT)
        )
        self._channels = [
            grpc.secure_channel(address, credentials, options=list(channel_options))
            for address in self.addresses
        ]
        self._stubs = [Stub(channel) for channel in self._channels]
        self._current = 0  # the replica that answered last: the first one tried

    @property
    def address(self) -> str:
        """The replica calls go to first (the one that answered last)."""
        return self.addresses[self._current]

    @classmethod
    def from_config(cls, config: ClientConfig, token: str | None = None) -> Client:
        """Trust and identity as the config says: a CA file or a pinned hash, and a
        client certificate when the config names one."""
        if config.ca_file is not None:
            ca_pem = _read(config.ca_file, "ca_file")
        else:
            assert config.ca_cert_hash is not None
            ca_pem = _pinned_ca(config.addresses, config.ca_cert_hash, config.timeout_seconds)
        cert = _read(config.cert_file, "cert_file") if config.cert_file else None
        key = _read(config.key_file, "key_file") if config.key_file else None
        return cls(
            config.addresses,
            config.timeout_seconds,
            credentials=channel_credentials(ca_pem, cert, key),
            token=token,
        )

    @property
    def channels(self) -> tuple[grpc.Channel, ...]:
        """The mutual-TLS channels, one per replica, in order: what ``kubeca
        signer-proxy`` forwards on."""
        return tuple(self._channels)

    def service_account_keys(self) -> list[ServiceAccountKey]:
        """The published service-account verification keys (ExternalJWTSigner
        FetchKeys), current first."""
        signers = {
            id(stub): jwt_grpc.ExternalJWTSignerStub(channel)
            for stub, channel in zip(self._stubs, self._channels, strict=True)
        }
        reply = self._invoke(
            lambda stub, seconds: signers[id(stub)].FetchKeys(
                jwt_pb.FetchKeysRequest(), timeout=seconds, metadata=self._metadata
            )
        )
        return [ServiceAccountKey(k.key_id, k.key) for k in reply.keys]

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _invoke(self, call: Callable[[Stub, float], _T]) -> _T:
        """``call(stub, seconds_left)`` on the current replica, failing over on
        UNAVAILABLE until the deadline; every other error is raised at once."""
        deadline = time.monotonic() + self.timeout
        count = len(self._stubs)
        start, attempt = self._current, 0
        last: KubecaError | None = None
        round_all_tls = True
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise last or DeadlineExceeded("no kubeca replica answered in time")
            index = (start + attempt) % count
            try:
                result = call(self._stubs[index], remaining)
            except grpc.RpcError as exc:
                error = error_from_rpc(exc, self.addresses[index], self._receive_limit)
                if count == 1 or exc.code() != grpc.StatusCode.UNAVAILABLE:
                    self._current = index  # it answered, if only to refuse
                    raise error from None
                # A closed TLS connection is either a refused client certificate or a
                # replica that died mid-call: try the others, but a whole round of
                # refusals is the answer.
                round_all_tls = round_all_tls and isinstance(error, Unauthenticated)
                last, attempt = error, attempt + 1
                if attempt % count == 0:
                    if round_all_tls:
                        raise error from None
                    round_all_tls = True
                    time.sleep(max(0.0, min(RETRY_PAUSE_SECONDS, deadline - time.monotonic())))
                continue
            self._current = index
            return result

    def issue_certificate(
        self,
        profile: str,
        csr: bytes,
        parameters: Mapping[str, str] | None = None,
        lifetime_seconds: int = 0,
        force_new: bool = False,
    ) -> IssuedCertificate:
        """The certificate for ``csr``. An identical earlier request's certificate comes
        back (``reused``) while it is outside its renewal window, unless ``force_new``."""
        request = pb.IssueCertificateRequest(
            profile=profile,
            csr=csr,
            parameters=dict(parameters or {}),
            lifetime_seconds=lifetime_seconds,
            force_new=force_new,
        )
        r = self._invoke(
            lambda stub, left: stub.IssueCertificate(request, timeout=left, metadata=self._metadata)
        )
        issued = IssuedCertificate(
            certificate_pem=r.certificate_pem,
            ca_certificate_pem=r.ca_certificate_pem,
            serial=r.serial,
            not_before=_utc(r.not_before),
            not_after=_utc(r.not_after),
            fingerprint_sha256=r.fingerprint_sha256,
            authority=r.authority,
            reused=r.reused,
            ca_bundle_pem=r.ca_bundle_pem,
        )
        _check_issued(csr, issued)
        return issued

    def ca_certificates(self, authority: str = "") -> list[CACertificate]:
        request = pb.GetCACertificatesRequest(authority=authority)
        r = self._invoke(
            lambda stub, left: stub.GetCACertificates(
                request, timeout=left, metadata=self._metadata
            )
        )
        return [
            CACertificate(
                a.authority,
                a.certificate_pem,
                a.ca_cert_hash,
                _utc(a.not_after),
                a.bundle_pem,
                a.issuing_key_id,
                a.cross_certificate_pem,
                a.key_provenance,
            )
            for a in r.authorities
        ]

    def profiles(self) -> list[ProfileInfo]:
        r = self._invoke(
            lambda stub, left: stub.ListProfiles(
                pb.ListProfilesRequest(), timeout=left, metadata=self._metadata
            )
        )
        return [
            ProfileInfo(
                name=p.name,
                authority=p.authority,
                common_name=p.common_name,
                organizations=tuple(p.organizations),
                key_usages=tuple(p.key_usages),
                extended_key_usages=tuple(p.extended_key_usages),
                san_rule=p.san_rule,
                parameters=tuple(
                    ProfileParameter(q.name, q.description, q.required, q.default_value)
                    for q in p.parameters
                ),
                default_lifetime_seconds=p.default_lifetime_seconds,
                max_lifetime_seconds=p.max_lifetime_seconds,
                enabled=p.enabled,
            )
            for p in r.profiles
        ]

    # --- bootstrap tokens (operators) ------------------------------------------------

    def create_bootstrap_token(
        self,
        profiles: Sequence[str],
        node_name: str,
        addresses: Sequence[str] = (),
        ttl_seconds: int = 0,
    ) -> CreatedToken:
        request = pb.CreateBootstrapTokenRequest(
            profiles=list(profiles),
            node_name=node_name,
            addresses=list(addresses),
            ttl_seconds=ttl_seconds,
        )
        r = self._invoke(lambda stub, left: stub.CreateBootstrapToken(request, timeout=left))
        return CreatedToken(r.token, r.token_id, _utc(r.expires), r.ca_cert_hash)

    def bootstrap_tokens(self, page_size: int = 0) -> Iterator[BootstrapToken]:
        """Every live token the caller may see, page after page, as they arrive."""
        token = ""
        while True:
            request = pb.ListBootstrapTokensRequest(page_size=page_size, page_token=token)
            r = self._invoke(
                lambda stub, left, request=request: stub.ListBootstrapTokens(  # type: ignore[misc]
                    request, timeout=left
                )
            )
            for t in r.tokens:
                yield BootstrapToken(
                    token_id=t.token_id,
                    profiles=tuple(t.profiles),
                    node_name=t.node_name,
                    addresses=tuple(t.addresses),
                    expires=_utc(t.expires),
                    created_by=t.created_by,
                    used_profiles=tuple(t.used_profiles),
                    revoked=t.revoked,
                )
            token = r.next_page_token
            if not token:
                return

    def revoke_bootstrap_token(self, token_id: str) -> None:
        request = pb.RevokeBootstrapTokenRequest(token_id=token_id)
        self._invoke(lambda stub, left: stub.RevokeBootstrapToken(request, timeout=left))

    # --- the inventory, revocation and CRLs ------------------------------------------

    def revoke_certificate(self, serial: str, reason: str = "unspecified") -> RevokedCertificate:
        request = pb.RevokeCertificateRequest(serial=serial, reason=reason)
        r = self._invoke(lambda stub, left: stub.RevokeCertificate(request, timeout=left))
        return RevokedCertificate(_utc(r.revoked_at), r.authority, r.crl_number)

    def crl(self, authority: str) -> CRL:
        request = pb.GetCRLRequest(authority=authority)
        r = self._invoke(
            lambda stub, left: stub.GetCRL(request, timeout=left, metadata=self._metadata)
        )
        crl = CRL(r.crl_der, r.crl_number, _utc(r.this_update), _utc(r.next_update))
        try:
            x509.load_der_x509_crl(crl.der)
        except ValueError as exc:
            raise InternalError(f"the service returned an unreadable CRL ({exc})") from None
        return crl

    def certificates(
        self,
        authority: str = "",
        profile: str = "",
        expiring_within_seconds: int = 0,
        revoked_only: bool = False,
        page_size: int = 0,
    ) -> Iterator[CertificateRecord]:
        """Every certificate that matches, page after page as they arrive (the service
        answers in pages of at most a thousand)."""
        token = ""
        while True:
            request = pb.ListCertificatesRequest(
                authority=authority,
                profile=profile,
                expiring_within_seconds=expiring_within_seconds,
                revoked_only=revoked_only,
                page_size=page_size,
                page_token=token,
            )
            r = self._invoke(
                lambda stub, left, request=request: stub.ListCertificates(  # type: ignore[misc]
                    request, timeout=left
                )
            )
            for c in r.certificates:
                yield CertificateRecord(
                    serial=c.serial,
                    authority=c.authority,
                    profile=c.profile,
                    subject=c.subject,
                    sans=tuple(c.sans),
                    not_before=_utc(c.not_before),
                    not_after=_utc(c.not_after),
                    caller=c.caller,
                    revoked=c.revoked,
                    revoked_at=_utc(c.revoked_at) if c.revoked else None,
                    revocation_reason=c.revocation_reason,
                    fingerprint_sha256=c.fingerprint_sha256,
                )
            token = r.next_page_token
            if not token:
                return


def _pinned_ca(addresses: Sequence[str], pin: str, timeout: float) -> bytes:
    """The service CA, fetched from the first replica that answers and checked against
    ``pin``; a mismatch is an answer (raised at once), an unreachable replica is not."""
    last: KubecaError | None = None
    for address in addresses:
        try:
            return pinned_ca(address, pin, timeout)
        except Unavailable as exc:
            last = exc
    assert last is not None
    raise last
