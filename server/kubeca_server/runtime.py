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
from collections.abc import Mapping
from concurrent import futures
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType

import grpc
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from grpc_health.v1 import health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from kubeca_client.errors import ConfigError, KubecaError
from kubeca_client.files import PRIVATE, PUBLIC, atomic_write
from kubeca_client.keys import spki_hash

from kubeca_server import metrics as metrics_module
from kubeca_server.audit import AuditLog
from kubeca_server.authorities import (
    CertificateAuthority,
    init_authorities,
    load_authorities,
)
from kubeca_server.authority import Authority
from kubeca_server.config import SERVICE_CA, ServerConfig, load_config
from kubeca_server.crl import CRLPublisher
from kubeca_server.keys.pkcs11_backend import Pkcs11Backend
from kubeca_server.ledger import (
    Checkpoint,
    InventoryEntry,
    Verification,
    sign_checkpoint,
    verify,
)
from kubeca_server.lint import Linter
from kubeca_server.logs import configure_logging
from kubeca_server.metrics import Metrics
from kubeca_server.service import (
    SERVICE_NAME,
    CertificateAuthorityService,
    HealthMonitor,
    add_to_server,
)
from kubeca_server.service_tls import (
    ensure_server_certificate,
    issue_operator_credentials,
    load_server_credentials,
)
from kubeca_server.store import SQLiteStore
from kubeca_server.token_admin import TokenAdmin

log = structlog.get_logger("kubeca.server")

RPC_THREADS = 16
MAX_CONCURRENT_RPCS = 256
GRACE_SECONDS = 5.0
RESTART_BACKOFF_SECONDS = 1.0
MAINTENANCE_SECONDS = 60.0
CHECKPOINT_SECONDS = 3600.0
CRASH_WINDOW_SECONDS = 60.0
MAX_CRASHES_IN_WINDOW = 5


def open_backend(config: ServerConfig, metrics: Metrics | None = None) -> Pkcs11Backend:
    on_sign = metrics.hsm_sign if metrics is not None else (lambda seconds: None)
    return Pkcs11Backend(
        config.hsm.module, config.hsm.token_label, config.hsm.read_pin(), on_sign=on_sign
    )


def run_init(config: ServerConfig) -> list[str]:
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    backend = open_backend(config)
    try:
        linter = Linter()
        report = init_authorities(config, backend, linter)
        service_ca = load_authorities(config, backend)[SERVICE_CA]
        report.append(ensure_server_certificate(config, service_ca, linter))
        report.append(
            f"kubeca-service-ca: {service_ca.ca_cert_hash} (keep it off this machine: "
            "clients pin it, and 'audit verify --service-ca-hash' checks the ledger with it)"
        )
        return report
    finally:
        backend.close()


def check_startup(config: ServerConfig) -> None:
    """Everything a worker needs, checked once before any worker is spawned, so a
    wrong setup stops the server with its real reason instead of a respawn loop."""
    backend = open_backend(config)
    try:
        authorities = load_authorities(config, backend)
        load_server_credentials(config, authorities[SERVICE_CA])
    finally:
        backend.close()
    AuditLog(config.audit_log).close()
    SQLiteStore(config.database).close()


def issue_credentials(config: ServerConfig, name: str, out: Path, lifetime: timedelta) -> Path:
    """Write an operator's client certificate, key and the service CA into ``out``."""
    backend = open_backend(config)
    store = SQLiteStore(config.database)
    audit = AuditLog(config.audit_log, store)
    try:
        service_ca = load_authorities(config, backend)[SERVICE_CA]
        credentials = issue_operator_credentials(name, service_ca, Linter(), lifetime)
        certificate = credentials.certificate
        audit.record(
            "credentials.issued",
            "warning",
            outcome="issued",
            identity=name,
            serial=format(certificate.serial_number, "x"),
            not_after=certificate.not_valid_after_utc.isoformat(),
            has_grant=name in config.grants,
        )
    finally:
        audit.close()
        store.close()
        backend.close()
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(out / "client.key", credentials.key_pem, PRIVATE)
    atomic_write(out / "client.crt", certificate.public_bytes(Encoding.PEM), PUBLIC)
    atomic_write(out / "ca.crt", credentials.ca_pem, PUBLIC)
    return out


class Maintenance:
    """Keeps each CRL fresh before its NextUpdate, and checkpoints the audit chain with
    a signature from the service CA's HSM key, at intervals and on demand."""

    def __init__(
        self,
        crls: CRLPublisher,
        store: SQLiteStore,
        audit: AuditLog,
        service_ca: CertificateAuthority,
        authorities: Mapping[str, CertificateAuthority],
        metrics: Metrics,
        interval: float = MAINTENANCE_SECONDS,
    ) -> None:
        self._authorities = dict(authorities)
        self._metrics = metrics
        self._crls = crls
        self._store = store
        self._audit = audit
        self._service_ca = service_ca
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
        now = datetime.now(UTC)
        for ca in (*self._authorities.values(), self._service_ca):
            left = (ca.certificate.not_valid_after_utc - now).total_seconds()
            self._metrics.ca_expiry(ca.name, left)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.observe_expiry()
                self._crls.refresh_all()
                checkpoint(self._store, self._audit, self._service_ca, CHECKPOINT_SECONDS)
            except Exception:
                # The next round tries again; the failure is for the operator's log.
                log.exception("maintenance.failed")


def checkpoint(
    store: SQLiteStore,
    audit: AuditLog,
    service_ca: CertificateAuthority,
    min_age_seconds: float = 0,
) -> Checkpoint | None:
    """Sign the chain's head, unless it is signed already or the last checkpoint is
    younger than ``min_age_seconds``."""
    head = store.head()
    if head is None:
        return None
    previous = store.checkpoints()
    now = datetime.now(UTC)
    # The checkpoint's own record follows it; nothing else new means nothing to sign.
    only_its_record = (
        bool(previous)
        and head.seq == previous[-1].seq + 1
        and '"event":"audit.checkpoint"' in head.record
    )
    if previous and (
        previous[-1].seq == head.seq
        or only_its_record
        or (now - previous[-1].signed_at).total_seconds() < min_age_seconds
    ):
        return None
    signed = sign_checkpoint(head.seq, head.hash, service_ca.key, now)
    store.add_checkpoint(signed)
    audit.record("audit.checkpoint", checkpoint_seq=signed.seq, head_hash=signed.head_hash)
    return signed


def verify_audit(config: ServerConfig, service_ca_hash: str | None) -> Verification:
    """Walk the chain and its checkpoints; needs the state directory, not the HSM.

    The checkpoints' signing key is trusted only as far as its certificate: read from
    the very directory being checked unless ``service_ca_hash`` (which init prints, to
    be kept elsewhere) pins it.
    """
    store = SQLiteStore(config.database, read_only=True)
    try:
        ca_path = config.ca_dir / f"{SERVICE_CA}.crt"
        try:
            service_ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
        except (OSError, ValueError):
            raise ConfigError(f"cannot read the service CA certificate {ca_path}") from None
        rows = list(store.chain())
        inventory = [
            InventoryEntry(
                r.serial,
                r.audit_seq,
                r.fingerprint_sha256,
                r.revoked_at is not None,
                _pem_fingerprint(r.certificate_pem),
            )
            for r in store.list_certificates()
        ]
        result = verify(rows, store.checkpoints(), inventory, service_ca.public_key())
        anchor = spki_hash(service_ca)
        if service_ca_hash is not None and anchor != service_ca_hash:
            result.problems.insert(
                0,
                f"the service CA in {ca_path} is not the one pinned: expected "
                f"{service_ca_hash}, found {anchor} (checkpoints cannot be trusted)",
            )
        result.anchor_pinned = service_ca_hash is not None
        return result
    finally:
        store.close()


def _pem_fingerprint(pem: str) -> str:
    try:
        certificate = x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        return "unreadable"
    return certificate.fingerprint(hashes.SHA256()).hex()


def checkpoint_now(config: ServerConfig) -> Checkpoint | None:
    backend = open_backend(config)
    store = SQLiteStore(config.database)
    audit = AuditLog(config.audit_log, store)
    try:
        return checkpoint(store, audit, load_authorities(config, backend)[SERVICE_CA])
    finally:
        audit.close()
        store.close()
        backend.close()


@dataclass
class Worker:
    server: grpc.Server
    health: HealthMonitor
    maintenance: Maintenance
    backend: Pkcs11Backend
    audit: AuditLog
    store: SQLiteStore
    port: int

    def stop(self) -> None:
        self.health.stop()
        self.server.stop(GRACE_SECONDS).wait()
        self.maintenance.stop()
        self.health.join()
        self.backend.close()
        self.store.close()
        self.audit.close()


def start_worker(config: ServerConfig, reuse_port: bool) -> Worker:
    metrics = Metrics(enabled=config.metrics_listen is not None)
    backend = open_backend(config, metrics)
    authorities = load_authorities(config, backend)
    service_ca = authorities.pop(SERVICE_CA)
    tls = load_server_credentials(config, service_ca)
    store = SQLiteStore(config.database)
    audit = AuditLog(config.audit_log, store)
    authority = Authority(
        authorities,
        config.leaf,
        audit,
        Linter(),
        grants=config.grants,
        store=store,
        enable_super_admin=config.enable_super_admin,
    )
    monitor = HealthMonitor(backend.probe, on_change=metrics.hsm_up)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=RPC_THREADS, thread_name_prefix="rpc"),
        options=[
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            ("grpc.max_receive_message_length", config.max_request_bytes),
            ("grpc.max_send_message_length", 4 * 1024 * 1024),
        ],
        maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS,
    )
    crls = CRLPublisher(authorities, store, audit, config.crl_dir)
    service = CertificateAuthorityService(
        authority,
        TokenAdmin(store, audit, config.grants),
        crls,
        monitor,
        service_ca.ca_cert_hash,
        metrics,
    )
    add_to_server(service, server)
    health_pb2_grpc.add_HealthServicer_to_server(monitor.servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, reflection.SERVICE_NAME, "grpc.health.v1.Health"), server
    )
    pair = [(tls.key_pem, tls.chain_pem)]
    # Operators must present a client certificate from the service CA. grpcio cannot
    # make a client certificate optional, so the anonymous and bootstrap-token callers
    # have their own port, TLS without client certificates.
    operator_port = _bind(
        server,
        config.listen,
        grpc.ssl_server_credentials(
            pair, root_certificates=service_ca.certificate_pem.encode(), require_client_auth=True
        ),
    )
    if config.listen_bootstrap:
        _bind(server, config.listen_bootstrap, grpc.ssl_server_credentials(pair))
    maintenance = Maintenance(crls, store, audit, service_ca, authorities, metrics)
    maintenance.observe_expiry()
    crls.refresh_all()
    monitor.start()
    maintenance.start()
    server.start()
    return Worker(server, monitor, maintenance, backend, audit, store, operator_port)


def _bind(server: grpc.Server, address: str, credentials: grpc.ServerCredentials) -> int:
    try:
        port = server.add_secure_port(address, credentials)
    except RuntimeError:
        port = 0
    if port == 0:
        raise ConfigError(f"cannot bind {address} (in use, or not a local address)")
    return port


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
    check_startup(config)
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
            target=_worker_main, args=(str(config.path),), name=f"kubeca-worker-{index}"
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
