"""The service's own TLS: its server certificate and operator client credentials.

Both are signed in the HSM by the service CA (``kubeca-service-ca``), a fourth CA kept
apart from the cluster's: a cluster certificate never authenticates a caller, and a
service certificate is never useful to the cluster. The server's TLS key is the one
private key kubeca keeps on disk (0600, in the state directory): gRPC needs it in
memory to terminate TLS.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from kubeca_client.errors import ConfigError
from kubeca_client.files import PRIVATE, PUBLIC, atomic_write
from kubeca_client.keys import (
    KeyAlgorithm,
    PrivateKey,
    generate_private_key,
    private_key_pem,
    spki_der,
)
from kubeca_client.names import parse_dns_name, parse_san_list

from kubeca_server.ca.authority import CertificateAuthority
from kubeca_server.config import ServerConfig
from kubeca_server.profiles import OPERATOR, SERVICE_SERVER, Inputs, build_leaf
from kubeca_server.serials import new_serial

NEARS_EXPIRY = "it expires"


@dataclass(frozen=True)
class ServerCredentials:
    key_pem: bytes
    chain_pem: bytes  # the server certificate, then the service CA


def _paths(config: ServerConfig) -> tuple[Path, Path]:
    return config.tls_dir / "server.key", config.tls_dir / "server.crt"


def _wanted_sans(config: ServerConfig) -> set[str]:
    sans = parse_san_list(",".join(config.tls.server_names), "tls.server_names")
    return {*sans.dns, *map(str, sans.ips)}


def _current(config: ServerConfig, service_ca: CertificateAuthority, now: datetime) -> str | None:
    """Why the certificate on disk must be replaced, or None if it is fine."""
    key_path, cert_path = _paths(config)
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError):
        return "missing or unreadable"
    if not isinstance(key, PrivateKey) or spki_der(key) != spki_der(cert):
        return "its key does not match"
    signer = service_ca.signer_of(cert)
    try:
        if signer is None:
            raise ValueError("no generation of the service CA signed it")
        cert.verify_directly_issued_by(signer.certificate)
    except (InvalidSignature, ValueError, TypeError):
        return "not signed by the current service CA"
    if signer is not service_ca.issuing:
        return "signed by a service CA generation that no longer issues"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    have = {
        *san.get_values_for_type(x509.DNSName),
        *map(str, san.get_values_for_type(x509.IPAddress)),
    }
    if have != _wanted_sans(config):
        return "tls.server_names changed"
    if now >= cert.not_valid_after_utc:
        return "it expired"
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    if now >= cert.not_valid_after_utc - lifetime / 3:
        return f"{NEARS_EXPIRY} {cert.not_valid_after_utc:%Y-%m-%d}"
    return None


def ensure_server_certificate(config: ServerConfig, service_ca: CertificateAuthority) -> str:
    """Issue the server's TLS certificate when missing, changed or near expiry."""
    now = datetime.now(UTC)
    reason = _current(config, service_ca, now)
    key_path, cert_path = _paths(config)
    if reason is None:
        return f"server TLS certificate: current, in {cert_path}"
    key = generate_private_key(KeyAlgorithm.ECDSA_P256)
    names = parse_san_list(",".join(config.tls.server_names), "tls.server_names")
    issuer = service_ca.issuing
    builder = build_leaf(
        SERVICE_SERVER,
        Inputs(extra_sans=names),
        key.public_key(),
        issuer.issuer,
        new_serial(),
        now,
        config.tls.certificate_lifetime,
    )
    cert = issuer.sign(issuer.prepare(builder))
    config.tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(key_path, private_key_pem(key), PRIVATE)
    chain = cert.public_bytes(serialization.Encoding.PEM) + issuer.certificate_pem.encode()
    atomic_write(cert_path, chain, PUBLIC)
    until = cert.not_valid_after_utc
    return f"server TLS certificate: issued ({reason}), valid until {until:%Y-%m-%d}"


def load_server_credentials(
    config: ServerConfig, service_ca: CertificateAuthority
) -> ServerCredentials:
    reason = _current(config, service_ca, datetime.now(UTC))
    key_path, cert_path = _paths(config)
    # Serving on in the renewal window is fine (init re-issues it); anything else is not.
    if reason is not None and not reason.startswith(NEARS_EXPIRY):
        raise ConfigError(
            f"the server TLS certificate in {config.tls_dir} is unusable ({reason}); "
            f"run 'kubeca-server --config {config.path} init'"
        )
    return ServerCredentials(key_path.read_bytes(), cert_path.read_bytes())


@dataclass(frozen=True)
class OperatorCredentials:
    certificate: x509.Certificate
    key_pem: bytes
    ca_pem: bytes


def issue_operator_credentials(
    name: str, service_ca: CertificateAuthority, lifetime: timedelta
) -> OperatorCredentials:
    """A client certificate for operator identity ``name``; the key is made here."""
    parse_dns_name(name, "--name")
    key = generate_private_key(KeyAlgorithm.ECDSA_P256)
    issuer = service_ca.issuing
    builder = build_leaf(
        OPERATOR,
        Inputs(node_name=name),
        key.public_key(),
        issuer.issuer,
        new_serial(),
        datetime.now(UTC),
        lifetime,
    )
    cert = issuer.sign(issuer.prepare(builder))
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return OperatorCredentials(cert, private_key_pem(key), service_ca.bundle_pem.encode())
