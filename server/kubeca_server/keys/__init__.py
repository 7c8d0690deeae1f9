"""Key backends: where CA private keys live and how they sign.

A backend hands out CA keys as pyca/cryptography private-key objects, so the layers
above build certificates with plain cryptography builders whatever holds the key.
"""

from kubeca_server.keys.backend import CAPrivateKey, KeyBackend

__all__ = ["CAPrivateKey", "KeyBackend"]
