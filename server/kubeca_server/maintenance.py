"""What a worker does between requests: keep each CRL fresh before its NextUpdate,
checkpoint the audit chain with the service CA's HSM key, and report how long each CA
has left. Every worker runs it; the store keeps the work from going backwards."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime

import structlog

from kubeca_server.ca.crl import CRLPublisher
from kubeca_server.ca.registry import CARegistry
from kubeca_server.ledger.audit import Ledger
from kubeca_server.ledger.checkpoints import checkpoint
from kubeca_server.metrics import Metrics

log = structlog.get_logger("kubeca.maintenance")

MAINTENANCE_SECONDS = 60.0
CHECKPOINT_SECONDS = 3600.0


class Maintenance:
    def __init__(
        self,
        registry: CARegistry,
        crls: CRLPublisher,
        ledger: Ledger,
        metrics: Metrics,
        clock: Callable[[], datetime],
        interval: float = MAINTENANCE_SECONDS,
    ) -> None:
        self._registry = registry
        self._crls = crls
        self._ledger = ledger
        self._metrics = metrics
        self._clock = clock
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="maintenance", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def observe_expiry(self) -> None:
        now = self._clock()
        for ca in self._registry.snapshot().values():
            left = (ca.issuing.not_after - now).total_seconds()
            self._metrics.ca_expiry(ca.name, left)

    def run_once(self) -> None:
        """At start: the expiry gauges and every CRL, before the first request."""
        self.observe_expiry()
        self._crls.refresh_all()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.observe_expiry()
                self._crls.refresh_all()
                service = self._registry.service.issuing
                checkpoint(
                    self._ledger, service.signer.sign_bytes, self._clock(), CHECKPOINT_SECONDS
                )
            except Exception:
                # The next round tries again; the failure is for the operator's log.
                log.exception("maintenance.failed")
