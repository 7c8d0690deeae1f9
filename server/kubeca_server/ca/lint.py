"""Lint a certificate or CRL before a CA key signs it (boulder's order of operations).

The template is first made into a *copy*: the certificate (or CRL) exactly as the CA
key will sign it, to the byte, but with a placeholder where the signature goes
(``stand_in_copy``). pkilint's RFC 5280 checks run on that copy; only a clean copy
reaches the HSM, and the HSM then signs the copy's own to-be-signed bytes (see
``ca.signer``): what is signed is what was linted, and the template is encoded once.
A malformed certificate or CRL is therefore never signed by a CA key.
``ca.signer.Signer`` is the only caller.

Every certificate is linted, but pkilint need not redo what cannot change. A
certificate's *shape* is everything pkilint's verdict could depend on except its DNS
names: the subject's attribute types, every extension but the SANs and the SKI (the
SANs by the kinds of name they hold), the key's type and size, the issuer and signature
algorithm, the validity's encodings, the serial's length. The first certificate of a
shape is linted whole and the verdict on everything but its names is kept; each later
certificate of that shape has its names checked by the same rule pkilint applies to
them (its own domain-name predicate), and refuses on the same findings. The shape is
read from the copy itself, never taken from the caller. tests/unit/test_lint_shapes.py
holds this against pkilint run whole on a really signed certificate, over generated
certificates of every profile.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from kubeca_client.errors import InternalError, InvalidArgument
from kubeca_client.names import is_dns1123_subdomain
from pkilint import loader, pkix
from pkilint.pkix import certificate, crl, extension, general_name, name

from kubeca_server.keys import CAPrivateKey, CAPublicKey, signature_hash
from kubeca_server.keys.hsm_key import HsmEcPrivateKey, HsmRsaPrivateKey

FAILING = {"FATAL", "ERROR"}
# pkilint checks DNS names with the web-PKI rule of its `validators` dependency, which
# wants at least two labels and no wildcard. Both are valid here: kubeadm requires the
# single-label names "kubernetes" and "localhost" (and node names are often one label),
# and accepts "*.example.com" extra SANs. Exactly this finding, for exactly such names
# (DNS-1123 after an optional "*."), is accepted; every other error refuses.
DNS_SYNTAX = "pkix.invalid_domain_name_syntax"


@dataclass(frozen=True)
class Finding:
    severity: str
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.severity} {self.code}" + (f": {self.message}" if self.message else "")


def _name_finding(dns_name: str) -> Finding | None:
    """What pkilint's DNS name syntax check says of ``dns_name`` (None: nothing)."""
    # The very predicate pkilint's DomainNameSyntaxValidator applies.
    if general_name.validators_predicate(general_name.validators.domain, dns_name):
        return None
    return Finding("ERROR", DNS_SYNTAX, f'Invalid domain name syntax: "{dns_name}"')


def _accepted(finding: Finding) -> bool:
    if finding.code != DNS_SYNTAX:
        return False
    prefix, suffix = 'Invalid domain name syntax: "', '"'
    message = finding.message
    if not (message.startswith(prefix) and message.endswith(suffix)):
        return False
    quoted = message[len(prefix) : -len(suffix)]
    wildcard = quoted.startswith("*.")
    name = quoted.removeprefix("*.")
    return is_dns1123_subdomain(name) and (wildcard or "." not in name)


def _validator() -> Any:
    return certificate.create_pkix_certificate_validator_container(
        certificate.create_decoding_validators(
            name.ATTRIBUTE_TYPE_MAPPINGS, extension.EXTENSION_MAPPINGS
        ),
        [
            certificate.create_issuer_validator_container([]),
            certificate.create_validity_validator_container(),
            certificate.create_subject_validator_container([]),
            certificate.create_extensions_validator_container([]),
            certificate.create_spki_validator_container([]),
        ],
    )


def _crl_validator() -> Any:
    return crl.create_pkix_crl_validator_container(
        [
            pkix.create_attribute_decoder(name.ATTRIBUTE_TYPE_MAPPINGS),
            pkix.create_extension_decoder(extension.EXTENSION_MAPPINGS),
        ],
        [
            crl.create_issuer_validator_container([]),
            crl.create_validity_validator_container([]),
            crl.create_extensions_validator_container([]),
        ],
    )


def _placeholder(ca_key: CAPublicKey) -> bytes:
    """A signature-shaped value as long as the CA key's longest: a DER ECDSA-Sig-Value
    with both integers at full size, or an RSA signature's length."""
    if isinstance(ca_key, ec.EllipticCurvePublicKey):
        top = (1 << (ca_key.curve.key_size - 1)) | 1
        return encode_dss_signature(top, top)
    return b"\x01" * (ca_key.key_size // 8)


def _stand_in(ca_key: CAPublicKey) -> CAPrivateKey:
    """A key object of the CA key's kind whose "signature" is the placeholder."""
    signature = _placeholder(ca_key)
    if isinstance(ca_key, ec.EllipticCurvePublicKey):
        return HsmEcPrivateKey("stand-in", ca_key, lambda data, digest: signature)
    return HsmRsaPrivateKey("stand-in", ca_key, lambda data, digest: signature)


def stand_in_copy(builder: x509.CertificateBuilder, ca_key: CAPublicKey) -> x509.Certificate:
    """The certificate ``builder`` makes under ``ca_key`` (issuer, signature algorithm,
    every byte of the TBS), with a placeholder signature: what is linted, then signed."""
    return builder.sign(_stand_in(ca_key), signature_hash(ca_key))


def stand_in_crl(
    builder: x509.CertificateRevocationListBuilder, ca_key: CAPublicKey
) -> x509.CertificateRevocationList:
    """``stand_in_copy`` for a CRL."""
    return builder.sign(_stand_in(ca_key), signature_hash(ca_key))


def _findings(results: Any) -> list[Finding]:
    return [
        Finding(d.finding.severity.name, d.finding.code, d.message or "")
        for result in results
        for d in result.finding_descriptions
    ]


def _refusals(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity in FAILING and not _accepted(f)]


def _shape(copy: x509.Certificate, ca_key: CAPublicKey) -> tuple[Hashable, ...]:
    """Everything of ``copy`` that pkilint's verdict could depend on, but its DNS names
    (and the values that are unique by design: the serial's bits, the SKI)."""
    key = copy.public_key()
    key_shape: Hashable = (
        ("ec", key.curve.name)
        if isinstance(key, ec.EllipticCurvePublicKey)
        else ("rsa", key.key_size, key.public_numbers().e)
        if isinstance(key, rsa.RSAPublicKey)
        else (type(key).__name__,)
    )
    extensions: list[Hashable] = []
    for ext in copy.extensions:
        if isinstance(ext.value, x509.SubjectAlternativeName):
            kinds = sorted({_name_kind(n) for n in ext.value})
            extensions.append((ext.oid.dotted_string, ext.critical, tuple(kinds)))
        elif isinstance(ext.value, x509.SubjectKeyIdentifier):
            extensions.append((ext.oid.dotted_string, ext.critical))
        else:
            value = ext.value.public_bytes()
            extensions.append((ext.oid.dotted_string, ext.critical, value))
    return (
        tuple(a.oid.dotted_string for a in copy.subject),
        copy.issuer.public_bytes(),
        key_shape,
        tuple(extensions),
        _ca_kind(ca_key),
        copy.not_valid_before_utc.year >= 2050,  # GeneralizedTime from 2050 (RFC 5280)
        copy.not_valid_after_utc.year >= 2050,
        (copy.serial_number.bit_length() + 8) // 8,  # its DER length
    )


def _name_kind(name: x509.GeneralName) -> str:
    if isinstance(name, x509.DNSName):
        return "wildcard" if name.value.startswith("*.") else "dns"
    if isinstance(name, x509.IPAddress):
        return f"ip{name.value.version}"
    return type(name).__name__


def _ca_kind(ca_key: CAPublicKey) -> str:
    if isinstance(ca_key, ec.EllipticCurvePublicKey):
        return f"ec-{ca_key.curve.name}"
    return f"rsa-{ca_key.key_size}"


def _dns_names(copy: x509.Certificate) -> list[str]:
    try:
        extension = copy.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(extension.value.get_values_for_type(x509.DNSName))


MAX_SHAPES = 4096


class Linter:
    """pkilint's RFC 5280 checks, with the verdict on each certificate shape kept."""

    def __init__(self) -> None:
        self._validator = _validator()
        self._crl_validator = _crl_validator()
        self._loader = loader.RFC5280CertificateDocumentLoader()
        self._crl_loader = loader.RFC5280CertificateListDocumentLoader()
        self._lock = threading.Lock()
        self._verdicts: dict[tuple[Hashable, ...], tuple[Finding, ...]] = {}
        self.shapes_linted = 0  # how many whole pkilint runs the cache needed

    def findings(self, der: bytes) -> list[Finding]:
        """Every pkilint finding for a DER certificate."""
        document = self._loader.load_der_document(der, "certificate")
        return _findings(self._validator.validate(document.root))

    def crl_findings(self, der: bytes) -> list[Finding]:
        """Every pkilint finding for a DER CRL."""
        document = self._crl_loader.load_der_document(der, "crl")
        return _findings(self._crl_validator.validate(document.root))

    def errors(self, der: bytes) -> list[Finding]:
        """The findings that refuse a certificate."""
        return _refusals(self.findings(der))

    def refusals(self, builder: x509.CertificateBuilder, ca_key: CAPublicKey) -> list[Finding]:
        """The findings that would refuse this template, as pkilint run whole finds them."""
        return self._judge(stand_in_copy(builder, ca_key), ca_key)

    def _judge(self, copy: x509.Certificate, ca_key: CAPublicKey) -> list[Finding]:
        shape = _shape(copy, ca_key)
        verdict = self._verdicts.get(shape)
        if verdict is None:
            errors = self.errors(copy.public_bytes(Encoding.DER))
            # What depends on this certificate's own names is judged again each time.
            kept = tuple(f for f in errors if f.code != DNS_SYNTAX)
            with self._lock:
                if len(self._verdicts) >= MAX_SHAPES:
                    self._verdicts.clear()
                self._verdicts[shape] = kept
                self.shapes_linted += 1
            return errors
        named = [f for n in _dns_names(copy) if (f := _name_finding(n)) is not None]
        return [*verdict, *(f for f in named if not _accepted(f))]

    def check(self, builder: x509.CertificateBuilder, ca_key: CAPublicKey) -> x509.Certificate:
        """Refuse the template unless it lints clean; return the copy that was linted
        (``stand_in_copy``), whose to-be-signed bytes the CA key is to sign."""
        copy = stand_in_copy(builder, ca_key)
        errors = self._judge(copy, ca_key)
        if errors:
            raise InvalidArgument(
                "the certificate would not pass lint, so it was not signed: "
                + "; ".join(str(e) for e in errors[:5])
            )
        return copy

    def check_crl(
        self, builder: x509.CertificateRevocationListBuilder, ca_key: CAPublicKey
    ) -> x509.CertificateRevocationList:
        """Refuse the CRL unless it lints clean; return the copy that was linted."""
        copy = stand_in_crl(builder, ca_key)
        errors = _refusals(self.crl_findings(copy.public_bytes(Encoding.DER)))
        if errors:
            # Nothing in a CRL comes from a caller: a finding here is kubeca's own bug.
            raise InternalError(
                "the CRL would not pass lint, so it was not signed: "
                + "; ".join(str(e) for e in errors[:5])
            )
        return copy
