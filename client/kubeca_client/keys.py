"""Leaf keys, made where they are used: generation, CSRs and PEM encoding.

Names follow kubeadm's ``encryptionAlgorithm`` values so operators can use the words
they already know. The server reuses ``KeyAlgorithm`` for its CA key configuration.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
HasPublicKey = x509.Certificate | x509.CertificateSigningRequest | PrivateKey


class KeyAlgorithm(StrEnum):
    ECDSA_P256 = "ECDSA-P256"
    ECDSA_P384 = "ECDSA-P384"
    RSA_2048 = "RSA-2048"
    RSA_3072 = "RSA-3072"
    RSA_4096 = "RSA-4096"

    @property
    def is_rsa(self) -> bool:
        return self.value.startswith("RSA-")

    @property
    def rsa_bits(self) -> int:
        if not self.is_rsa:
            raise ValueError(f"{self.value} is not an RSA algorithm")
        return int(self.value.removeprefix("RSA-"))

    @property
    def curve(self) -> ec.EllipticCurve:
        if self is KeyAlgorithm.ECDSA_P256:
            return ec.SECP256R1()
        if self is KeyAlgorithm.ECDSA_P384:
            return ec.SECP384R1()
        raise ValueError(f"{self.value} is not an ECDSA algorithm")

    @classmethod
    def parse(cls, text: str) -> KeyAlgorithm:
        """The algorithm named by ``text``; a ValueError lists the valid names."""
        try:
            return cls(text.strip().upper())
        except ValueError:
            valid = ", ".join(a.value for a in cls)
            raise ValueError(f"unknown key algorithm {text!r}; use one of {valid}") from None


def generate_private_key(algorithm: KeyAlgorithm) -> PrivateKey:
    if algorithm.is_rsa:
        return rsa.generate_private_key(public_exponent=65537, key_size=algorithm.rsa_bits)
    return ec.generate_private_key(algorithm.curve)


def spki_der(subject: HasPublicKey | PublicKey) -> bytes:
    """The SubjectPublicKeyInfo DER: what "the same key" means between a key, a CSR and
    a certificate."""
    key = subject if isinstance(subject, PublicKey) else subject.public_key()
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def spki_hash(subject: HasPublicKey | PublicKey) -> str:
    """kubeadm's --discovery-token-ca-cert-hash: "sha256:" + hex SHA-256 of the SPKI DER."""
    return "sha256:" + hashlib.sha256(spki_der(subject)).hexdigest()


def algorithm_of(key: PrivateKey) -> KeyAlgorithm:
    """The algorithm name of an existing key, so a renewal keeps its kind."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return KeyAlgorithm.ECDSA_P384 if key.curve.name == "secp384r1" else KeyAlgorithm.ECDSA_P256
    bits = key.key_size
    return KeyAlgorithm(f"RSA-{bits}") if bits in (2048, 3072, 4096) else KeyAlgorithm.RSA_2048


def build_csr(key: PrivateKey, subject: x509.Name | None = None) -> bytes:
    """A PEM CSR for ``key``. The subject may stay empty: the profile decides it."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject or x509.Name([]))
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def private_key_pem(key: PrivateKey) -> bytes:
    """PKCS#1 / SEC1 PEM, the encoding kubeadm writes and reads."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
