"""An in-memory key backend for fast unit tests of the layers above the HSM.

Never a substitute for the PKCS#11 integration tests: keys here are ordinary
cryptography keys and vanish with the process.
"""

from __future__ import annotations

from kubeca_client.errors import Unavailable
from kubeca_client.keys import KeyAlgorithm, generate_private_key

from kubeca_server.keys.backend import CAPrivateKey, KeyFacts


class MemoryBackend:
    def __init__(self) -> None:
        self._keys: dict[str, CAPrivateKey] = {}
        self._imported: set[str] = set()
        self.available = True
        self.connections = 1  # tests raise it to play a reconnect

    def find_key(self, label: str) -> CAPrivateKey | None:
        return self._keys.get(label)

    def create_key(self, label: str, algorithm: KeyAlgorithm) -> CAPrivateKey:
        if label in self._keys:
            raise ValueError(f"key {label!r} exists already")
        key = generate_private_key(algorithm)
        self._keys[label] = key
        return key

    def import_key(self, label: str, key: CAPrivateKey) -> CAPrivateKey:
        if label in self._keys:
            raise ValueError(f"key {label!r} exists already")
        self._keys[label] = key
        self._imported.add(label)
        return key

    def key_facts(self, label: str) -> KeyFacts | None:
        if label not in self._keys:
            return None
        inside = label not in self._imported
        return KeyFacts(True, False, inside, inside, inside, True)

    def probe(self) -> None:
        if not self.available:
            raise Unavailable("the in-memory key backend was marked unavailable")

    def close(self) -> None:
        self._keys.clear()
