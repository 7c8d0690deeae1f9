"""The CA registry: every CA by name, each with its generations.

Lookups are by name (``get``), then by generation or key identifier on the CA. The
registry holds one immutable snapshot and swaps it whole when the store says the
generations changed (a rotation step taken by another process or replica), so a
request sees one consistent set of CAs from start to end.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping

from kubeca_client.authorities import SERVICE_CA
from kubeca_client.errors import NotFound

from kubeca_server.ca.authority import CertificateAuthority, Generation


class CARegistry:
    def __init__(self, authorities: Mapping[str, CertificateAuthority]) -> None:
        self._snapshot: Mapping[str, CertificateAuthority] = dict(authorities)
        self._lock = threading.Lock()

    def replace(self, authorities: Mapping[str, CertificateAuthority]) -> None:
        with self._lock:
            self._snapshot = dict(authorities)

    def snapshot(self) -> Mapping[str, CertificateAuthority]:
        return self._snapshot

    def get(self, name: str) -> CertificateAuthority:
        snapshot = self._snapshot
        if name not in snapshot:
            known = ", ".join(snapshot)
            raise NotFound(f"no certificate authority named {name[:64]!r} (known: {known})")
        return snapshot[name]

    def cluster(self) -> list[CertificateAuthority]:
        """The CAs the cluster trusts: every one but the service's own."""
        return [ca for name, ca in self._snapshot.items() if name != SERVICE_CA]

    @property
    def service(self) -> CertificateAuthority:
        return self.get(SERVICE_CA)

    def generations(self) -> Iterator[Generation]:
        for ca in self._snapshot.values():
            yield from ca.generations
