"""The process model: one worker per core, each its own process, sharing the ports.

Each worker loads the PKCS#11 module itself (spawned, never forked after the module is
loaded), logs in once, and serves the same ports with SO_REUSEPORT; within a worker,
PKCS#11 calls are serialized by the backend's lock (hsm-notes.md §1). The supervisor
restarts a worker that dies, and gives up (exiting failed, so a service manager sees
it) when they keep dying or when one reports a configuration error.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

import structlog
from kubeca_client.errors import ConfigError, KubecaError

from kubeca_server import metrics as metrics_module
from kubeca_server.config import ServerConfig, load_config
from kubeca_server.logs import configure_logging

log = structlog.get_logger("kubeca.server")

GRACE_SECONDS = 5.0
RESTART_BACKOFF_SECONDS = 1.0
CRASH_WINDOW_SECONDS = 60.0
MAX_CRASHES_IN_WINDOW = 5


def check_startup(config: ServerConfig) -> None:
    """Everything a worker needs, checked once before any worker is spawned, so a
    wrong setup stops the server with its real reason instead of a respawn loop."""
    from kubeca_server.app import open_core, tls_listeners

    core = open_core(config)
    try:
        tls_listeners(config, core)
        if core.service_account is None:
            raise ConfigError(
                "service-account: no token-signing key in the store; run "
                f"'kubeca-server --config {config.path} init'"
            )
    finally:
        core.close()


def _serve_one(config_path: Path, reuse_port: bool, serve_socket: bool = True) -> None:
    """One worker process (or the only process): serve until SIGTERM or SIGINT."""
    config = load_config(config_path)
    configure_logging()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    from kubeca_server.app import start_worker

    worker = start_worker(config, reuse_port, serve_socket)
    log.info("server.listening", listen=config.listen, port=worker.port)
    stop.wait()
    log.info("server.stopping")
    worker.stop()


def _worker_main(config_path: str, index: int) -> None:
    try:
        # A unix socket cannot be shared like a port: the first worker owns it.
        _serve_one(Path(config_path), reuse_port=True, serve_socket=index == 0)
    except KubecaError as exc:
        log.error("worker.failed", error=exc.message)
        sys.exit(exc.exit_code)


MAX_WORKERS = 64


def default_workers(config: ServerConfig) -> int:
    """One worker per core this process may run on (PKCS#11 calls are serialized within
    a process, so processes are how signing scales: hsm-notes.md §1); one when the
    config listens on port 0, since an ephemeral port cannot be shared by several."""
    if config.listen.endswith(":0"):
        return 1
    return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0))))


def serve(config: ServerConfig, workers: int | None = None) -> None:
    check_startup(config)
    if workers is None:
        workers = default_workers(config)
    if config.metrics_listen is not None:
        # Before any worker exists (or this process records anything): they all share
        # the directory the /metrics endpoint here reads.
        metrics_module.prepare(config.metrics_dir)
        try:
            metrics_module.serve(config.metrics_listen)
        except OSError as exc:
            raise ConfigError(
                f"metrics_listen: cannot bind {config.metrics_listen} ({exc})"
            ) from None
        log.info("server.metrics", listen=config.metrics_listen)
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
            target=_worker_main, args=(str(config.path), index), name=f"kubeca-worker-{index}"
        )
        process.start()
        return process

    processes = [spawn(i) for i in range(count)]
    failed = False
    deaths: list[float] = []
    log.info("server.supervising", workers=count, listen=config.listen)
    while not stopping.wait(0.5):
        for index, process in enumerate(processes):
            if process.is_alive():
                continue
            if process.exitcode == ConfigError.exit_code:
                # Restarting will not fix a configuration (or a refused PIN): stop, and
                # exit with the failure so a service manager does not call it success.
                log.error("server.worker_config_error", worker=index)
                stopping.set()
                failed = True
                break
            now = time.monotonic()
            deaths = [t for t in deaths if now - t < CRASH_WINDOW_SECONDS] + [now]
            log.error("server.worker_died", worker=index, exitcode=process.exitcode)
            if process.pid is not None:
                metrics_module.worker_exited(process.pid)
            if len(deaths) > MAX_CRASHES_IN_WINDOW:
                # Something is wrong that restarting will not fix; let the service
                # manager see the failure instead of spinning.
                log.error("server.giving_up", deaths=len(deaths), window=CRASH_WINDOW_SECONDS)
                stopping.set()
                failed = True
                break
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
    if failed:
        raise ConfigError("worker processes kept dying at start; see the log above")
