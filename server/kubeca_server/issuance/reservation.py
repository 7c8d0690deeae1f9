"""What an issuance holds while it signs, and the one place that gives it back.

Before the HSM signs, an issuance may take two things: the idempotency claim on its
request (so identical requests that overlap wait for one certificate instead of each
signing their own) and a bootstrap token's use of one profile (so two nodes racing with
one token get one certificate). If anything fails before the certificate's record is
committed, both are released here, on the way out of the ``with`` block; once the
record is committed (which ends the claim in the same transaction), ``keep`` says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta
from types import TracebackType

from kubeca_client.errors import Aborted

from kubeca_server.issuance.permits import Permit
from kubeca_server.profiles import Profile
from kubeca_server.store import CertificateRow, Store

# How long a claim holds before it counts as abandoned (its worker died mid-request).
CLAIM_SECONDS = 30.0
# How long an identical request waits for the first one's certificate.
CLAIM_WAIT_SECONDS = 10.0
CLAIM_POLL_SECONDS = 0.02


class Reservation:
    def __init__(self, store: Store, clock: Callable[[], datetime]) -> None:
        self._store = store
        self._clock = clock
        self._claim: str | None = None
        self._used: tuple[Permit, Profile] | None = None
        self._kept = False

    def __enter__(self) -> Reservation:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if not self._kept:
            self.release()

    def claim_or_reuse(
        self, request_fingerprint: str, reusable: Callable[[CertificateRow], bool]
    ) -> CertificateRow | None:
        """The current certificate for this request (if ``reusable``), or None once this
        issuance holds the claim to sign it. Raises Aborted if another holds it past the
        wait."""
        deadline = time.monotonic() + CLAIM_WAIT_SECONDS
        while True:
            now = self._clock()
            with self._store.unit() as unit:
                existing = unit.inventory.current(request_fingerprint, now)
                if existing is not None and not reusable(existing):
                    existing = None
                claimed = existing is None and unit.claims.claim(
                    request_fingerprint, now, now - timedelta(seconds=CLAIM_SECONDS)
                )
            if existing is not None:
                return existing
            if claimed:
                self._claim = request_fingerprint
                return None
            if time.monotonic() > deadline:
                raise Aborted("an identical request is still being issued; try again")
            time.sleep(CLAIM_POLL_SECONDS)

    def use(self, permit: Permit, profile: Profile) -> None:
        """Take what the permit uses up for ``profile`` (a token's one use)."""
        permit.use(self._store, profile, self._clock())
        self._used = (permit, profile)

    def keep(self) -> None:
        """The certificate's record is committed: its claim ended with it, and the token
        use stays used."""
        self._kept = True

    def release(self) -> None:
        claim, self._claim = self._claim, None
        used, self._used = self._used, None
        if claim is not None:
            with self._store.unit() as unit:
                unit.claims.release(claim)
        if used is not None:
            permit, profile = used
            permit.give_back(self._store, profile)
