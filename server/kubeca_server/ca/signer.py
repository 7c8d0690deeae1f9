"""The only way a CA key signs anything: prepare (lint), then sign, once.

Like boulder's issuance package, lint-before-sign is enforced by a type rather than by
convention: ``Signer.prepare`` lints a throwaway-signed copy of a certificate or CRL
template and returns a ``Prepared`` value; ``Signer.sign`` accepts only a value that this
signer prepared and has not signed yet, signs it with the HSM key, and checks the
signature before returning. The key object itself never leaves the signer, so leaves,
CA certificates, the service's TLS certificate, operator credentials and CRLs all pass
through the same two steps.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from kubeca_client.errors import InternalError, Unavailable

from kubeca_server.ca.lint import Linter
from kubeca_server.keys import (
    CAPrivateKey,
    CAPublicKey,
    sign_bytes,
    signature_hash,
    verify_signature,
)

Builder = TypeVar("Builder", x509.CertificateBuilder, x509.CertificateRevocationListBuilder)


class Prepared(Generic[Builder]):
    """A template that passed lint: the signer that prepared it signs it at most once."""

    __slots__ = ("_builder", "_signed", "_signer")

    def __init__(self, builder: Builder, signer: Signer) -> None:
        self._builder: Builder = builder
        self._signer = signer
        self._signed = False


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

    def prepare(self, builder: x509.CertificateBuilder) -> Prepared[x509.CertificateBuilder]:
        """Lint ``builder`` (InvalidArgument naming the findings if it fails)."""
        self._linter.check(builder, self.public_key)
        return Prepared(builder, self)

    def prepare_crl(
        self, builder: x509.CertificateRevocationListBuilder
    ) -> Prepared[x509.CertificateRevocationListBuilder]:
        self._linter.check_crl(builder, self.public_key)
        return Prepared(builder, self)

    def _take(self, prepared: Prepared[Builder]) -> Builder:
        self._before_signing()
        with self._lock:
            if prepared._signer is not self:
                raise InternalError("a template prepared for another CA key reached this one")
            if prepared._signed:
                raise InternalError("a prepared template was handed to be signed twice")
            prepared._signed = True
        return prepared._builder

    def sign(self, prepared: Prepared[x509.CertificateBuilder]) -> x509.Certificate:
        builder = self._take(prepared)
        certificate = builder.sign(self._key, signature_hash(self._key))
        self._check(certificate.signature, certificate.tbs_certificate_bytes)
        return certificate

    def sign_crl(
        self, prepared: Prepared[x509.CertificateRevocationListBuilder]
    ) -> x509.CertificateRevocationList:
        builder = self._take(prepared)
        crl = builder.sign(self._key, signature_hash(self._key))
        self._check(crl.signature, crl.tbs_certlist_bytes)
        return crl

    def sign_bytes(self, data: bytes) -> bytes:
        """A bare signature (audit checkpoints): not X.509, so nothing to lint."""
        self._before_signing()
        signature = sign_bytes(self._key, data)
        self._check(signature, data)
        return signature

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
