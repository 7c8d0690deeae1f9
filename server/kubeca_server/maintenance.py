"""What a worker does between requests: keep each CRL fresh before its NextUpdate,
checkpoint the audit chain with the service CA's HSM key, and report how long each CA
has left. Every worker runs it; the store keeps the work from going backwards."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta

import structlog

from kubeca_server.ca.crl import CRLPublisher
from kubeca_server.ca.lifecycle import GenerationWatch
from kubeca_server.ca.registry import CARegistry
from kubeca_server.ledger.audit import Ledger
from kubeca_server.ledger.checkpoints import checkpoint
from kubeca_server.metrics import Metrics
from kubeca_server.store.records import Provenance

log = structlog.get_logger("kubeca.maintenance")

MAINTENANCE_SECONDS = 60.0
CHECKPOINT_SECONDS = 3600.0
# How soon a rotation step taken elsewhere reaches this worker: one small store read.
RELOAD_SECONDS = 2.0
# CA expiry warnings start this long before a CA's NotAfter (rotate begin is the remedy).
EXPIRY_WARNING = timedelta(days=365)


class Maintenance:
    def __init__(
        self,
        registry: CARegistry,
        crls: CRLPublisher,
        ledger: Ledger,
        metrics: Metrics,
        clock: Callable[[], datetime],
        interval: float = MAINTENANCE_SECONDS,
        watch: GenerationWatch | None = None,
        reload_interval: float = RELOAD_SECONDS,
    ) -> None:
        self._registry = registry
        self._crls = crls
        self._ledger = ledger
        self._metrics = metrics
        self._clock = clock
        self._interval = interval
        self._stop = threading.Event()
        self._watch = watch
        self._reload_interval = reload_interval
        self._thread = threading.Thread(target=self._run, name="maintenance", daemon=True)
        self._reloader = threading.Thread(target=self._reload, name="generations", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if self._watch is not None:
            self._reloader.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in (self._thread, self._reloader):
            if thread.is_alive():
                thread.join(timeout=30)

    def observe_expiry(self) -> None:
        now = self._clock()
        for ca in self._registry.snapshot().values():
            self._metrics.ca_expiry(ca.name, (ca.issuing.not_after - now).total_seconds())
            expiring = False
            for generation in ca.published:
                left = generation.not_after - now
                expiring = expiring or left < EXPIRY_WARNING
                self._metrics.ca_generation(ca.name, generation.number, left.total_seconds())
                if left < EXPIRY_WARNING:
                    log.warning(
                        "ca.expiring",
                        authority=ca.name,
                        generation=generation.number,
                        not_after=generation.not_after.isoformat(),
                        days_left=left.days,
                        remedy=f"kubeca-server ca rotate begin --authority {ca.name}",
                    )
            self._metrics.ca_expiring(ca.name, expiring)
            self._metrics.ca_provenance(ca.name, ca.issuing.provenance is Provenance.IMPORTED)

    def reload_once(self) -> bool:
        """Pick up a rotation step; then the CRLs and gauges follow the new snapshot."""
        if self._watch is None or not self._watch.check():
            return False
        log.info("ca.generations_reloaded")
        self.observe_expiry()
        self._crls.refresh_all()
        return True

    def _reload(self) -> None:
        while not self._stop.wait(self._reload_interval):
            try:
                self.reload_once()
            except Exception:
                # The next round tries again; the failure is for the operator's log.
                log.exception("maintenance.reload_failed")

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
