"""grpc.health.v1, kept true to what the service depends on: NOT_SERVING while the HSM
or the store cannot be reached (or the HSM holds keys other than the CAs'), SERVING
once they are back. Probed every few seconds, and at once after any UNAVAILABLE."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import structlog
from grpc_health.v1 import health, health_pb2
from kubeca_client.errors import KubecaError

log = structlog.get_logger("kubeca.health")


class HealthMonitor:
    def __init__(
        self,
        probe: Callable[[], None],
        services: Sequence[str],
        on_change: Callable[[bool], None] = lambda serving: None,
        interval: float = 5.0,
    ) -> None:
        self.servicer = health.HealthServicer()
        self._probe = probe
        self._services = ("", *services)
        self._on_change = on_change
        self._interval = interval
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health", daemon=True)
        self._serving: bool | None = None

    @property
    def serving(self) -> bool:
        return bool(self._serving)

    def start(self) -> None:
        self.check()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def join(self) -> None:
        """Wait for the probe thread, so nothing touches the HSM after this returns."""
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def recheck_soon(self) -> None:
        self._wake.set()

    def check(self) -> None:
        try:
            self._probe()
        except KubecaError as exc:
            self._set(False, exc.message)
        except Exception as exc:
            # Whatever broke, the service is not known to work: say so, and keep probing.
            log.exception("health.probe_failed")
            self._set(False, type(exc).__name__)
        else:
            self._set(True, "")

    def _set(self, serving: bool, reason: str) -> None:
        if serving == self._serving:
            return
        self._serving = serving
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in self._services:
            self.servicer.set(name, status)
        self._on_change(serving)
        if serving:
            log.info("health.serving")
        else:
            log.error("health.not_serving", reason=reason)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            if not self._stop.is_set():
                self.check()
