"""Lint a certificate before the CA signs it (boulder's order of operations).

The template is first signed with a throwaway key of the CA's kind, so the copy has
the same TBS layout and signature algorithm as the real certificate; pkilint's
RFC 5280 checks run on that copy; only a clean template reaches the HSM. A malformed
certificate is therefore never signed by a CA key.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from kubeca_client.errors import InvalidArgument
from kubeca_client.names import is_dns1123_subdomain
from pkilint import loader
from pkilint.pkix import certificate, extension, name

from kubeca_server.keys import CAPrivateKey, signature_hash

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


def _generate_like(ca_key: CAPrivateKey) -> CAPrivateKey:
    if isinstance(ca_key, ec.EllipticCurvePrivateKey):
        return ec.generate_private_key(ca_key.curve)
    return rsa.generate_private_key(public_exponent=65537, key_size=ca_key.key_size)


class Linter:
    def __init__(self) -> None:
        self._validator = _validator()
        self._loader = loader.RFC5280CertificateDocumentLoader()
        self._throwaway: dict[str, CAPrivateKey] = {}
        self._lock = threading.Lock()

    def findings(self, der: bytes) -> list[Finding]:
        """Every pkilint finding for a DER certificate."""
        document = self._loader.load_der_document(der, "certificate")
        results = self._validator.validate(document.root)
        return [
            Finding(d.finding.severity.name, d.finding.code, d.message or "")
            for result in results
            for d in result.finding_descriptions
        ]

    def errors(self, der: bytes) -> list[Finding]:
        """The findings that refuse a certificate."""
        return [f for f in self.findings(der) if f.severity in FAILING and not _accepted(f)]

    def _throwaway_like(self, ca_key: CAPrivateKey) -> CAPrivateKey:
        if isinstance(ca_key, ec.EllipticCurvePrivateKey):
            kind = f"ec-{ca_key.curve.name}"
        else:
            kind = f"rsa-{ca_key.key_size}"
        with self._lock:
            key = self._throwaway.get(kind)
            if key is None:
                key = self._throwaway[kind] = _generate_like(ca_key)
            return key

    def check(self, builder: x509.CertificateBuilder, ca_key: CAPrivateKey) -> None:
        """Refuse the template unless its throwaway-signed copy lints clean."""
        copy = builder.sign(self._throwaway_like(ca_key), signature_hash(ca_key))
        errors = self.errors(copy.public_bytes(Encoding.DER))
        if errors:
            raise InvalidArgument(
                "the certificate would not pass lint, so it was not signed: "
                + "; ".join(str(e) for e in errors[:5])
            )
