"""Key backends: where CA private keys live and how they sign.

A backend hands out CA keys as pyca/cryptography private-key objects, so the layers
above build certificates with plain cryptography builders whatever holds the key.
"""

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from kubeca_server.keys.backend import CAPrivateKey, CAPublicKey, KeyBackend, KeyFacts


def signature_hash(key: CAPrivateKey | CAPublicKey) -> hashes.SHA256 | hashes.SHA384:
    """The digest a CA key signs with, as Go (and so kubeadm) picks it: SHA-384 for
    P-384, SHA-256 otherwise."""
    curve = (
        key.curve
        if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey)
        else None
    )
    if curve is not None and curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def verify_signature(public_key: CAPublicKey, signature: bytes, data: bytes) -> None:
    """Raise InvalidSignature unless ``signature`` is the key's over ``data``, in the
    scheme its CA signs with (ECDSA, or RSA PKCS#1 v1.5, with ``signature_hash``)."""
    digest = signature_hash(public_key)
    if isinstance(public_key, rsa.RSAPublicKey):
        public_key.verify(signature, data, padding.PKCS1v15(), digest)
    else:
        public_key.verify(signature, data, ec.ECDSA(digest))


def sign_bytes(key: CAPrivateKey, data: bytes) -> bytes:
    """The key's signature over ``data``, in the scheme ``verify_signature`` checks."""
    digest = signature_hash(key)
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), digest)
    return key.sign(data, ec.ECDSA(digest))


__all__ = [
    "CAPrivateKey",
    "CAPublicKey",
    "KeyBackend",
    "KeyFacts",
    "sign_bytes",
    "signature_hash",
    "verify_signature",
]
