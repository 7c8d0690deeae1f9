"""The only way a CA key signs anything: prepare (lint), then sign, once.

Like boulder's issuance package, lint-before-sign is enforced by a type rather than by
convention: ``Signer.prepare`` lints the copy of a certificate or CRL template that
carries a placeholder signature (``lint.stand_in_copy``) and returns a ``Prepared``
value; ``Signer.sign`` accepts only a value that this signer prepared and has not signed
yet, has the HSM key sign that copy's to-be-signed bytes, checks the signature, and puts
it in the placeholder's place. So the bytes signed are the bytes linted, and a template
is encoded once. The key object itself never leaves the signer, so leaves, CA
certificates, the service's TLS certificate, operator credentials and CRLs all pass
through the same two steps.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from asn1crypto import crl as asn1_crl
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding
from kubeca_client.errors import InternalError, Unavailable

from kubeca_server.ca.lint import Linter
from kubeca_server.keys import CAPrivateKey, CAPublicKey, sign_bytes, verify_signature

Copy = TypeVar("Copy", x509.Certificate, x509.CertificateRevocationList)


class Prepared(Generic[Copy]):
    """A copy that passed lint: the signer that prepared it signs it at most once."""

    __slots__ = ("_copy", "_signed", "_signer")

    def __init__(self, copy: Copy, signer: Signer) -> None:
        self._copy: Copy = copy
        self._signer = signer
        self._signed = False


def with_signature(copy: Copy, signature: bytes) -> bytes:
    """The DER of ``copy`` with ``signature`` in its placeholder's place. asn1crypto
    re-encodes only what changed (the signature's BIT STRING and the outer SEQUENCE's
    length); the signed part keeps the very bytes that were linted."""
    der = copy.public_bytes(Encoding.DER)
    if isinstance(copy, x509.Certificate):
        certificate = asn1_x509.Certificate.load(der)
        certificate["signature_value"] = signature
        return bytes(certificate.dump())
    crl = asn1_crl.CertificateList.load(der)
    crl["signature"] = signature
    return bytes(crl.dump())


class Signer:
    """One CA key (in the HSM) and the linter every template passes first."""

    def __init__(
        self,
        key: CAPrivateKey,
        linter: Linter,
        before_signing: Callable[[], None] = lambda: None,
    ) -> None:
        self._key = key
        self._linter = linter
        self._lock = threading.Lock()
        # Raises Unavailable when the HSM's keys are not known to be the CAs' (after a
        # reconnect, until ca.keycheck has checked them): see KeyGuard.
        self._before_signing = before_signing

    @property
    def public_key(self) -> CAPublicKey:
        return self._key.public_key()

    @property
    def label(self) -> str:
        """The key's label in the token, or "" for a key that has none (memory)."""
        return str(getattr(self._key, "label", ""))

    def prepare(self, builder: x509.CertificateBuilder) -> Prepared[x509.Certificate]:
        """Lint ``builder`` (InvalidArgument naming the findings if it fails)."""
        return Prepared(self._linter.check(builder, self.public_key), self)

    def prepare_crl(
        self, builder: x509.CertificateRevocationListBuilder
    ) -> Prepared[x509.CertificateRevocationList]:
        return Prepared(self._linter.check_crl(builder, self.public_key), self)

    def _take(self, prepared: Prepared[Copy]) -> Copy:
        self._before_signing()
        with self._lock:
            if prepared._signer is not self:
                raise InternalError("a template prepared for another CA key reached this one")
            if prepared._signed:
                raise InternalError("a prepared template was handed to be signed twice")
            prepared._signed = True
        return prepared._copy

    def sign(self, prepared: Prepared[x509.Certificate]) -> x509.Certificate:
        copy = self._take(prepared)
        signature = self._signature(copy.tbs_certificate_bytes)
        return x509.load_der_x509_certificate(with_signature(copy, signature))

    def sign_crl(
        self, prepared: Prepared[x509.CertificateRevocationList]
    ) -> x509.CertificateRevocationList:
        copy = self._take(prepared)
        signature = self._signature(copy.tbs_certlist_bytes)
        return x509.load_der_x509_crl(with_signature(copy, signature))

    def _signature(self, data: bytes) -> bytes:
        """The CA key's signature over ``data`` (the HSM's), checked."""
        signature = sign_bytes(self._key, data)
        self._check(signature, data)
        return signature

    def sign_bytes(self, data: bytes) -> bytes:
        """A bare signature (audit checkpoints): not X.509, so nothing to lint."""
        self._before_signing()
        return self._signature(data)

    def signs_for(self, public_key: CAPublicKey) -> bool:
        """Whether the key in the HSM makes signatures ``public_key`` verifies: a fresh
        challenge, signed and checked (a public object in the token proves nothing)."""
        challenge = b"kubeca key check " + secrets.token_bytes(32)
        try:
            verify_signature(public_key, sign_bytes(self._key, challenge), challenge)
        except (InvalidSignature, ValueError, TypeError):
            return False
        return True

    def _check(self, signature: bytes, data: bytes) -> None:
        # A faulty HSM, or a token swapped under us (same labels, other keys), must not
        # produce a bad signature: that HSM cannot serve until it is put right.
        try:
            verify_signature(self.public_key, signature, data)
        except InvalidSignature:
            raise Unavailable(
                "the HSM's keys do not match the CA certificates (a signature by "
                f"{self.label or 'the CA key'} does not verify); the token was replaced "
                "or is faulty"
            ) from None
