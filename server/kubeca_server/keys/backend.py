"""The interface every key backend implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from kubeca_client.keys import KeyAlgorithm

CAPrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
CAPublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


@dataclass(frozen=True)
class KeyFacts:
    """What the token says about a private key: the attributes that tell a key made
    inside it (always sensitive, never extractable, local) from one imported."""

    sensitive: bool
    extractable: bool
    always_sensitive: bool
    never_extractable: bool
    local: bool
    sign_only: bool  # CKA_SIGN, and none of DECRYPT, UNWRAP, DERIVE

    @property
    def generated_inside(self) -> bool:
        return self.always_sensitive and self.never_extractable and self.local


class KeyBackend(Protocol):
    """Where CA keys live. Keys come out as cryptography private-key objects whose
    ``sign`` runs inside the backend and whose export methods raise; only the CA
    layer's ``Signer`` holds them."""

    def find_key(self, label: str) -> CAPrivateKey | None:
        """The key labelled ``label``, or None when there is none."""

    def create_key(self, label: str, algorithm: KeyAlgorithm) -> CAPrivateKey:
        """Generate a new key; it must not exist yet. Never replaces a key."""

    def import_key(self, label: str, key: CAPrivateKey) -> CAPrivateKey:
        """Put an existing key into the backend as sensitive, non-extractable and
        sign-only, with its public key; the label must be free. Returns the key as the
        backend now holds it (the argument is not kept)."""

    def key_facts(self, label: str) -> KeyFacts | None:
        """The private key's attributes, or None when there is no such key."""

    def probe(self) -> None:
        """Raise ``Unavailable`` unless the backend can sign right now."""

    @property
    def connections(self) -> int:
        """How often the backend has connected to its keys so far. A change means the
        keys behind the labels may be other keys (a token swapped for one with the same
        label and PIN), so they must be checked against their certificates again."""

    def close(self) -> None: ...
