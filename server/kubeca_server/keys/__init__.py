"""Key backends: where CA private keys live and how they sign.

A backend hands out CA keys as pyca/cryptography private-key objects, so the layers
above build certificates with plain cryptography builders whatever holds the key.
"""

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from kubeca_server.keys.backend import CAPrivateKey, KeyBackend


def signature_hash(key: CAPrivateKey) -> hashes.SHA256 | hashes.SHA384:
    """The digest a CA key signs with, as Go (and so kubeadm) picks it: SHA-384 for
    P-384, SHA-256 otherwise."""
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


__all__ = ["CAPrivateKey", "KeyBackend", "signature_hash"]
