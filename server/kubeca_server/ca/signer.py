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


def _element(der: bytes, offset: int) -> int:
    """The end of the DER element that starts at ``offset``."""
    first = der[offset + 1]
    if first < 0x80:
        return offset + 2 + first
    count = first & 0x7F
    length = int.from_bytes(der[offset + 2 : offset + 2 + count], "big")
    return offset + 2 + count + length


def _header(tag: int, length: int) -> bytes:
    if length < 0x80:
        return bytes((tag, length))
    size = (length.bit_length() + 7) // 8
    return bytes((tag, 0x80 | size)) + length.to_bytes(size, "big")


def with_signature(der: bytes, signature: bytes) -> bytes:
    """``der`` (a certificate or CRL: SEQUENCE of the signed part, the algorithm, the
    signature BIT STRING) with ``signature`` in place of the one it holds."""
    if der[0] != 0x30 or _element(der, 0) != len(der):
        raise InternalError("a linted copy is not one DER SEQUENCE")
    body = 2 + (der[1] & 0x7F if der[1] & 0x80 else 0)
    algorithm_end = _element(der, _element(der, body))
    if (
        algorithm_end >= len(der)
        or der[algorithm_end] != 0x03
        or _element(der, algorithm_end) != len(der)
    ):
        raise InternalError("a linted copy does not end with its signature")
    bits = _header(0x03, len(signature) + 1) + b"\x00" + signature
    content = der[body:algorithm_end] + bits
    return _header(0x30, len(content)) + content


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
        return x509.load_der_x509_certificate(
            with_signature(copy.public_bytes(Encoding.DER), signature)
        )

    def sign_crl(
        self, prepared: Prepared[x509.CertificateRevocationList]
    ) -> x509.CertificateRevocationList:
        copy = self._take(prepared)
        signature = self._signature(copy.tbs_certlist_bytes)
        return x509.load_der_x509_crl(with_signature(copy.public_bytes(Encoding.DER), signature))

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
