"""Putting the layers together, and the process model.

Each worker process loads the PKCS#11 module itself (spawned, never forked after
the module is loaded), logs in once, and serves the same port with SO_REUSEPORT.
Within a worker, PKCS#11 calls are serialized by the backend's lock; cores are used
by running several workers.
"""

from __future__ import annotations

import multiprocessing
import signal
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import grpc
import structlog
from grpc_health.v1 import health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from kubeca_client.errors import ConfigError, KubecaError

from kubeca_server.audit import AuditLog
from kubeca_server.authorities import CertificateAuthority, init_authorities, load_authorities
from kubeca_server.authority import Authority
from kubeca_server.config import ServerConfig, load_config
from kubeca_server.keys.pkcs11_backend import Pkcs11Backend
from kubeca_server.lint import Linter
from kubeca_server.logs import configure_logging
from kubeca_server.service import (
    SERVICE_NAME,
    CertificateAuthorityService,
    HealthMonitor,
    add_to_server,
)

log = structlog.get_logger("kubeca.server")

RPC_THREADS = 16
MAX_CONCURRENT_RPCS = 256
GRACE_SECONDS = 5.0
RESTART_BACKOFF_SECONDS = 1.0


def open_backend(config: ServerConfig) -> Pkcs11Backend:
    return Pkcs11Backend(config.hsm.module, config.hsm.token_label, config.hsm.read_pin())


def run_init(config: ServerConfig) -> list[str]:
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    backend = open_backend(config)
    try:
        return init_authorities(config, backend, Linter())
    finally:
        backend.close()


def check_authorities(config: ServerConfig) -> dict[str, CertificateAuthority]:
    """Load and verify every CA once, then let go of the HSM session."""
    backend = open_backend(config)
    try:
        return load_authorities(config, backend)
    finally:
        backend.close()


@dataclass
class Worker:
    server: grpc.Server
    health: HealthMonitor
    backend: Pkcs11Backend
    audit: AuditLog
    port: int

    def stop(self) -> None:
        self.health.stop()
        self.server.stop(GRACE_SECONDS).wait()
        self.backend.close()
        self.audit.close()


def start_worker(config: ServerConfig, reuse_port: bool) -> Worker:
    backend = open_backend(config)
    authorities = load_authorities(config, backend)
    audit = AuditLog(config.audit_log)
    authority = Authority(
        authorities,
        config.leaf,
        audit,
        Linter(),
        enable_super_admin=config.enable_super_admin,
    )
    monitor = HealthMonitor(backend.probe)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=RPC_THREADS, thread_name_prefix="rpc"),
        options=[
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            ("grpc.max_receive_message_length", config.max_request_bytes),
            ("grpc.max_send_message_length", 4 * 1024 * 1024),
        ],
        maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS,
    )
    add_to_server(CertificateAuthorityService(authority, monitor), server)
    health_pb2_grpc.add_HealthServicer_to_server(monitor.servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, reflection.SERVICE_NAME, "grpc.health.v1.Health"), server
    )
    try:
        port = server.add_insecure_port(config.listen)
    except RuntimeError:
        port = 0
    if port == 0:
        backend.close()
        raise ConfigError(f"listen: cannot bind {config.listen} (in use, or not a local address)")
    monitor.start()
    server.start()
    return Worker(server, monitor, backend, audit, port)


def _serve_one(config_path: Path, reuse_port: bool) -> None:
    """One worker process (or the only process): serve until SIGTERM or SIGINT."""
    config = load_config(config_path)
    configure_logging()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker = start_worker(config, reuse_port)
    log.info("server.listening", listen=config.listen, port=worker.port)
    stop.wait()
    log.info("server.stopping")
    worker.stop()


def _worker_main(config_path: str) -> None:
    try:
        _serve_one(Path(config_path), reuse_port=True)
    except KubecaError as exc:
        log.error("worker.failed", error=exc.message)
        sys.exit(exc.exit_code)


def serve(config: ServerConfig, workers: int) -> None:
    # Fail at start, with the real reason, before any worker is spawned.
    check_authorities(config)
    if workers == 1:
        _serve_one(config.path, reuse_port=False)
        return
    if config.listen.endswith(":0"):
        raise ConfigError("listen: port 0 cannot be shared by several workers; name a port")
    _supervise(config, workers)


def _supervise(config: ServerConfig, count: int) -> None:
    """Run ``count`` spawned workers; restart one that dies; stop all on a signal."""
    context = multiprocessing.get_context("spawn")
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def spawn(index: int) -> multiprocessing.process.BaseProcess:
        process = context.Process(
            target=_worker_main, args=(str(config.path),), name=f"kubeca-worker-{index}"
        )
        process.start()
        return process

    processes = [spawn(i) for i in range(count)]
    log.info("server.supervising", workers=count, listen=config.listen)
    while not stopping.wait(0.5):
        for index, process in enumerate(processes):
            if process.is_alive():
                continue
            if process.exitcode == ConfigError.exit_code:
                log.error("server.worker_config_error", worker=index)
                stopping.set()
                break
            log.error("server.worker_died", worker=index, exitcode=process.exitcode)
            time.sleep(RESTART_BACKOFF_SECONDS)
            processes[index] = spawn(index)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(GRACE_SECONDS + 5)
        if process.is_alive():
            process.kill()
    log.info("server.stopped")
