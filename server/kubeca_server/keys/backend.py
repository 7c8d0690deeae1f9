"""The interface every key backend implements."""

from __future__ import annotations

from typing import Protocol

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from kubeca_client.keys import KeyAlgorithm

CAPrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
CAPublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


class KeyBackend(Protocol):
    """Where CA keys live. Keys come out as cryptography private-key objects whose
    ``sign`` runs inside the backend and whose export methods raise; only the CA
    layer's ``Signer`` holds them."""

    def find_key(self, label: str) -> CAPrivateKey | None:
        """The key labelled ``label``, or None when there is none."""

    def create_key(self, label: str, algorithm: KeyAlgorithm) -> CAPrivateKey:
        """Generate a new key; it must not exist yet. Never replaces a key."""

    def probe(self) -> None:
        """Raise ``Unavailable`` unless the backend can sign right now."""

    @property
    def connections(self) -> int:
        """How often the backend has connected to its keys so far. A change means the
        keys behind the labels may be other keys (a token swapped for one with the same
        label and PIN), so they must be checked against their certificates again."""

    def close(self) -> None: ...
