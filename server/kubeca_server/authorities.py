"""The three cluster CAs: creating them in the HSM once, and loading them at start.

A CA is its HSM key plus its self-signed certificate kept in the state directory.
``init`` never replaces a key; ``load`` refuses to start when a certificate does not
belong to its key.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from kubeca_client.errors import ConfigError
from kubeca_client.files import atomic_write
from kubeca_client.keys import algorithm_of, spki_der, spki_hash

from kubeca_server.config import AuthorityConfig, ServerConfig
from kubeca_server.keys import CAPrivateKey, KeyBackend, signature_hash
from kubeca_server.lint import Linter
from kubeca_server.profiles import CA_COMMON_NAMES, Issuer, build_ca
from kubeca_server.serials import new_serial


@dataclass(frozen=True)
class CertificateAuthority:
    name: str
    certificate: x509.Certificate
    key: CAPrivateKey

    @property
    def certificate_pem(self) -> str:
        return self.certificate.public_bytes(Encoding.PEM).decode()

    @property
    def issuer(self) -> Issuer:
        return Issuer(
            name=self.certificate.subject,
            public_key=self.key.public_key(),
            not_after=self.certificate.not_valid_after_utc,
        )

    @property
    def ca_cert_hash(self) -> str:
        return spki_hash(self.certificate)


def _same_key(certificate: x509.Certificate, key: CAPrivateKey) -> bool:
    return spki_der(certificate) == spki_der(key)


def _read_certificate(config: ServerConfig, name: str) -> x509.Certificate | None:
    path = config.ca_dir / f"{name}.crt"
    if not path.exists():
        return None
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError:
        raise ConfigError(f"{path} is not a PEM certificate") from None


def _create_certificate(
    config: ServerConfig, authority: AuthorityConfig, key: CAPrivateKey, linter: Linter
) -> x509.Certificate:
    builder = build_ca(
        CA_COMMON_NAMES[authority.name],
        key.public_key(),
        new_serial(),
        datetime.now(UTC),
        authority.lifetime,
    )
    linter.check(builder, key)
    certificate = builder.sign(key, signature_hash(key))
    config.ca_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(config.ca_dir / f"{authority.name}.crt", certificate.public_bytes(Encoding.PEM))
    return certificate


def _check_is_ca(name: str, certificate: x509.Certificate) -> None:
    try:
        basic = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        basic, usage = None, None
    if basic is None or usage is None or not basic.ca or not usage.key_cert_sign:
        raise ConfigError(f"{name}: the certificate in the state directory is not a CA")


def init_authorities(config: ServerConfig, backend: KeyBackend, linter: Linter) -> list[str]:
    """Create what is missing; return one line per CA saying what was done."""
    report: list[str] = []
    for authority in config.authorities.values():
        key = backend.find_key(authority.key_label)
        certificate = _read_certificate(config, authority.name)
        if key is None and certificate is not None:
            raise ConfigError(
                f"{authority.name}: {config.ca_dir / (authority.name + '.crt')} exists but the "
                f"token has no key labelled {authority.key_label!r}; refusing to make a new CA "
                "under an existing certificate (restore the token, or remove the certificate)"
            )
        if key is None:
            key = backend.create_key(authority.key_label, authority.key_algorithm)
            _create_certificate(config, authority, key, linter)
            report.append(
                f"{authority.name}: created an {authority.key_algorithm.value} key in the HSM "
                "and its self-signed certificate"
            )
        elif certificate is None:
            _create_certificate(config, authority, key, linter)
            report.append(f"{authority.name}: key existed; created its certificate")
        elif not _same_key(certificate, key):
            raise ConfigError(
                f"{authority.name}: the certificate in {config.ca_dir} does not match the HSM "
                f"key {authority.key_label!r}"
            )
        else:
            line = f"{authority.name}: already initialized, nothing changed"
            kept = algorithm_of(key)
            if kept is not authority.key_algorithm:
                line += (
                    f" (its key is {kept.value}, the config asks {authority.key_algorithm.value}; "
                    "init never replaces a key)"
                )
            report.append(line)
    return report


def load_authorities(config: ServerConfig, backend: KeyBackend) -> dict[str, CertificateAuthority]:
    """Every CA, checked: certificate present, a CA, current, and bound to its HSM key."""
    loaded: dict[str, CertificateAuthority] = {}
    now = datetime.now(UTC)
    for authority in config.authorities.values():
        certificate = _read_certificate(config, authority.name)
        key = backend.find_key(authority.key_label)
        if certificate is None or key is None:
            missing = "certificate" if certificate is None else f"HSM key {authority.key_label!r}"
            raise ConfigError(
                f"{authority.name}: its {missing} is missing; run 'kubeca-server --config "
                f"{config.path} init' first"
            )
        if not _same_key(certificate, key):
            raise ConfigError(
                f"{authority.name}: {config.ca_dir / (authority.name + '.crt')} does not match "
                f"the HSM key {authority.key_label!r}; refusing to start"
            )
        if certificate.not_valid_after_utc <= now:
            raise ConfigError(f"{authority.name}: the CA certificate expired")
        _check_is_ca(authority.name, certificate)
        loaded[authority.name] = CertificateAuthority(authority.name, certificate, key)
    return loaded
