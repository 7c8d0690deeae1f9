"""Operator credentials: recorded in the inventory when issued, and refused at every
call once revoked.

gRPC's TLS takes no CRL, so the check is the service's: the set of revoked service-CA
serials, read from the store (which every worker and replica shares) at most
``REFRESH_SECONDS`` old. A revocation therefore reaches every worker within seconds,
and no call costs more than a set lookup.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from kubeca_client.authorities import SERVICE_CA
from kubeca_client.errors import Unauthenticated

from kubeca_server.issuance.model import OPERATOR, Caller
from kubeca_server.store import Store

REFRESH_SECONDS = 2.0


class RevokedCredentials:
    def __init__(
        self,
        store: Store,
        refresh_seconds: float = REFRESH_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._refresh = refresh_seconds
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._serials: frozenset[str] = frozenset()
        self._read_at: float | None = None

    def check(self, caller: Caller) -> None:
        """Raise Unauthenticated if the caller's client certificate was revoked."""
        if caller.kind != OPERATOR or not caller.serial:
            return
        if caller.serial in self._revoked():
            raise Unauthenticated(
                f"the client certificate of {caller.identity[:64]!r} (serial "
                f"{caller.serial[:40]}) was revoked; ask for new credentials"
            )

    def _revoked(self) -> frozenset[str]:
        now = self._monotonic()
        if self._read_at is not None and now - self._read_at < self._refresh:
            return self._serials
        with self._lock:
            if self._read_at is None or now - self._read_at >= self._refresh:
                # Unavailable propagates: a store that cannot say is no "not revoked".
                with self._store.unit(read_only=True) as unit:
                    rows = unit.inventory.revoked(SERVICE_CA)
                self._serials = frozenset(r.serial for r in rows)
                self._read_at = now
            return self._serials
