"""Prometheus metrics, served on a port of their own.

Worker processes each record into files in one directory that the serving process
reads at scrape time (prometheus_client's multiprocess mode), so a scrape shows the
whole server whichever worker did the work. prometheus_client picks its storage when
first imported, so this module imports it only after ``prepare`` set the directory.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# HSM signatures take tens of microseconds (ECDSA) to milliseconds (RSA); requests
# take milliseconds (lint dominates) to seconds under load.
SIGN_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0)
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


def prepare(directory: Path) -> None:
    """Start with an empty store of samples, shared with every worker spawned later."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, mode=0o700)
    os.environ[MULTIPROC_ENV] = str(directory)


def serve(listen: str) -> Any:
    """Serve /metrics for every process that records into the shared directory."""
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    host, _, port = listen.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host.strip("[]"), registry=registry)
    return server


def worker_exited(pid: int) -> None:
    """Drop a dead worker's live gauges (HSM up, CA expiry) from the totals."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


class Metrics:
    """What the service records; a no-op when metrics are off."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and bool(os.environ.get(MULTIPROC_ENV))
        if not self.enabled:
            return
        from prometheus_client import Counter, Gauge, Histogram

        self._issued = Counter(
            "kubeca_certificates_issued", "Certificates signed", ["profile", "authority"]
        )
        self._reused = Counter(
            "kubeca_certificates_reused",
            "Identical requests answered with a current certificate",
            ["profile"],
        )
        self._refused = Counter(
            "kubeca_requests_refused",
            "Requests refused, by status",
            ["method", "profile", "reason"],
        )
        self._requests = Histogram(
            "kubeca_request_duration_seconds",
            "gRPC request latency",
            ["method"],
            buckets=REQUEST_BUCKETS,
        )
        self._signs = Histogram(
            "kubeca_hsm_sign_duration_seconds", "HSM signing latency", buckets=SIGN_BUCKETS
        )
        self._hsm_up = Gauge(
            "kubeca_hsm_up", "1 while every worker can reach the HSM", multiprocess_mode="livemin"
        )
        self._ca_expiry = Gauge(
            "kubeca_ca_expiry_seconds",
            "Seconds until the CA certificate expires",
            ["authority"],
            multiprocess_mode="livemin",
        )
        self._generation_expiry = Gauge(
            "kubeca_ca_generation_expiry_seconds",
            "Seconds until each published CA generation's certificate expires",
            ["authority", "generation"],
            multiprocess_mode="livemin",
        )
        self._expiring = Gauge(
            "kubeca_ca_expiring",
            "1 while a published generation of the CA expires within a year (rotate it)",
            ["authority"],
            multiprocess_mode="livemax",
        )
        self._imported = Gauge(
            "kubeca_ca_key_imported",
            "1 when the issuing generation's key was imported (copies may exist outside "
            "the HSM), 0 when it was generated in the HSM",
            ["authority"],
            multiprocess_mode="livemax",
        )

    def issued(self, profile: str, authority: str, reused: bool) -> None:
        if not self.enabled:
            return
        if reused:
            self._reused.labels(profile).inc()
        else:
            self._issued.labels(profile, authority).inc()

    def refused(self, method: str, profile: str, reason: str) -> None:
        if self.enabled:
            self._refused.labels(method, profile, reason).inc()

    def request(self, method: str, seconds: float) -> None:
        if self.enabled:
            self._requests.labels(method).observe(seconds)

    def hsm_sign(self, seconds: float) -> None:
        if self.enabled:
            self._signs.observe(seconds)

    def hsm_up(self, up: bool) -> None:
        if self.enabled:
            self._hsm_up.set(1 if up else 0)

    def ca_expiry(self, authority: str, seconds: float) -> None:
        if self.enabled:
            self._ca_expiry.labels(authority).set(seconds)

    def ca_generation(self, authority: str, generation: int, seconds: float) -> None:
        if self.enabled:
            self._generation_expiry.labels(authority, str(generation)).set(seconds)

    def ca_expiring(self, authority: str, expiring: bool) -> None:
        if self.enabled:
            self._expiring.labels(authority).set(1 if expiring else 0)

    def ca_provenance(self, authority: str, imported: bool) -> None:
        if self.enabled:
            self._imported.labels(authority).set(1 if imported else 0)
