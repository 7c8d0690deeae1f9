"""The composition root: the only module that names concrete classes.

Everything else receives what it uses (a ``KeyBackend``, a ``Store``, a ``Ledger``, a
``CARegistry``) and never builds it, so a second store or key backend is one more
branch here and in ``store.factory``, not a change threaded through the layers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from kubeca_client.errors import ConfigError

from kubeca_server.api import server as api_server
from kubeca_server.api.ca_service import SERVICE_NAME, CAHandlers, ca_service
from kubeca_server.api.caller import local_caller, tls_caller
from kubeca_server.api.health import HealthMonitor
from kubeca_server.api.listeners import Listener, MutualTLS, ServerTLS, UnixSocket
from kubeca_server.api.methods import Environment
from kubeca_server.api.signer_service import SERVICE_NAMES as SIGNER_SERVICE_NAMES
from kubeca_server.api.signer_service import signer_services
from kubeca_server.ca import lifecycle
from kubeca_server.ca.crl import CRLPublisher
from kubeca_server.ca.keycheck import KeyGuard
from kubeca_server.ca.lint import Linter
from kubeca_server.ca.registry import CARegistry
from kubeca_server.ca.service_tls import load_server_credentials
from kubeca_server.ca.signing_key import KeyRing
from kubeca_server.config import ServerConfig
from kubeca_server.issuance.credentials import RevokedCredentials
from kubeca_server.issuance.inventory import Inventory
from kubeca_server.issuance.jwt_policy import ClaimsPolicy
from kubeca_server.issuance.jwt_signer import TokenSigner
from kubeca_server.issuance.permits import Gatekeeper
from kubeca_server.issuance.pipeline import IssuancePipeline
from kubeca_server.issuance.token_admin import TokenAdmin
from kubeca_server.keys import KeyBackend
from kubeca_server.keys.pkcs11_backend import Pkcs11Backend
from kubeca_server.ledger.audit import Ledger
from kubeca_server.ledger.mirror import Mirror
from kubeca_server.maintenance import Maintenance
from kubeca_server.metrics import Metrics
from kubeca_server.store.factory import open_store

GRACE_SECONDS = 5.0
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def open_backend(config: ServerConfig, metrics: Metrics | None = None) -> KeyBackend:
    on_sign = metrics.hsm_sign if metrics is not None else (lambda seconds: None)
    # The module reads these when it loads (p11-kit-client.so its server's address).
    os.environ.update(config.hsm.environment)
    return Pkcs11Backend(
        config.hsm.module, config.hsm.token_label, config.hsm.read_pin(), on_sign=on_sign
    )


def open_ledger(config: ServerConfig, *, migrate: bool = False, clock: Clock = utc_now) -> Ledger:
    """The store and the audit mirror, with the mirror caught up to the chain."""
    store = open_store(config.store, migrate=migrate)
    ledger = Ledger(store, Mirror(config.audit_log), clock)
    ledger.sync_mirror()
    return ledger


def close_ledger(ledger: Ledger) -> None:
    ledger.close()
    ledger.store.close()


@dataclass
class Core:
    """The domain of one process, built once: what the API and maintenance call."""

    config: ServerConfig
    backend: KeyBackend
    ledger: Ledger
    registry: CARegistry
    pipeline: IssuancePipeline
    inventory: Inventory
    tokens: TokenAdmin
    crls: CRLPublisher
    clock: Clock
    keys: KeyGuard
    credentials: RevokedCredentials
    # None until init has made the service-account key (unit tests of the CA side).
    service_account: TokenSigner | None = None

    def probe(self) -> None:
        """Raise Unavailable unless the HSM and the store both answer now, and the HSM's
        keys are the CAs' (checked again after every reconnect)."""
        self.backend.probe()
        self.ledger.store.probe()
        self.keys.ensure()

    def close(self) -> None:
        self.backend.close()
        close_ledger(self.ledger)


def build_core(
    config: ServerConfig,
    backend: KeyBackend,
    ledger: Ledger,
    linter: Linter | None = None,
    clock: Clock = utc_now,
) -> Core:
    keys = KeyGuard(backend)
    registry = CARegistry(
        lifecycle.load(config, backend, ledger.store, linter or Linter(), clock, keys.ensure)
    )
    keys.watch(registry.generations)
    gatekeeper = Gatekeeper(config.grants, ledger.store, clock)
    crls = CRLPublisher(registry, ledger, config.crl_dir, clock=clock)
    return Core(
        service_account=_token_signer(config, backend, ledger, clock),
        config=config,
        backend=backend,
        ledger=ledger,
        registry=registry,
        pipeline=IssuancePipeline(
            registry,
            gatekeeper,
            ledger,
            config.leaf,
            clock,
            enable_super_admin=config.enable_super_admin,
        ),
        inventory=Inventory(gatekeeper, ledger, crls, clock),
        tokens=TokenAdmin(gatekeeper, ledger, clock),
        crls=crls,
        clock=clock,
        keys=keys,
        credentials=RevokedCredentials(ledger.store),
    )


def _token_signer(
    config: ServerConfig, backend: KeyBackend, ledger: Ledger, clock: Clock
) -> TokenSigner | None:
    ring = KeyRing.open(backend, ledger.store, clock)
    if ring is None:
        return None
    sa = config.service_account
    return TokenSigner(
        ring,
        ClaimsPolicy(sa.issuers, sa.max_token_expiration, clock),
        ledger,
        config.grants,
        sa.max_token_expiration,
        sa.refresh_hint_seconds,
    )


def open_core(config: ServerConfig, metrics: Metrics | None = None) -> Core:
    backend = open_backend(config, metrics)
    try:
        ledger = open_ledger(config)
    except BaseException:
        backend.close()
        raise
    try:
        return build_core(config, backend, ledger)
    except BaseException:
        backend.close()
        close_ledger(ledger)
        raise


def tls_listeners(config: ServerConfig, core: Core) -> list[Listener]:
    service_ca = core.registry.service
    tls = load_server_credentials(config, service_ca)
    listeners: list[Listener] = [
        MutualTLS(config.listen, tls.key_pem, tls.chain_pem, service_ca.bundle_pem.encode())
    ]
    if config.listen_bootstrap:
        listeners.append(ServerTLS(config.listen_bootstrap, tls.key_pem, tls.chain_pem))
    return listeners


@dataclass
class Worker:
    core: Core
    health: HealthMonitor
    maintenance: Maintenance
    servers: list[api_server.RunningServer]

    @property
    def port(self) -> int:
        return self.servers[0].ports[0]

    def stop(self) -> None:
        self.health.stop()
        for server in self.servers:
            server.stop(GRACE_SECONDS)
        self.maintenance.stop()
        self.health.join()
        self.core.close()


def start_worker(config: ServerConfig, reuse_port: bool, serve_socket: bool = True) -> Worker:
    """One worker's servers. ``serve_socket``: this worker owns the signer's unix
    socket (one process per path; with several workers, the first)."""
    metrics = Metrics(enabled=config.metrics_listen is not None)
    core = open_core(config, metrics)
    servers: list[api_server.RunningServer] = []
    try:
        listeners = tls_listeners(config, core)
        signer = core.service_account
        if signer is None:
            raise ConfigError(
                "service-account: no token-signing key in the store; run "
                f"'kubeca-server --config {config.path} init'"
            )
        health = HealthMonitor(
            core.probe, (SERVICE_NAME, *SIGNER_SERVICE_NAMES), on_change=metrics.hsm_up
        )
        env = Environment(core.ledger, metrics, health, core.credentials)
        handlers = CAHandlers(
            core.pipeline, core.registry, core.inventory, core.tokens, core.crls, metrics
        )
        watch = lifecycle.GenerationWatch(
            config,
            core.backend,
            core.ledger.store,
            Linter(),
            core.registry,
            core.clock,
            core.keys.ensure,
        )
        maintenance = Maintenance(
            core.registry, core.crls, core.ledger, metrics, core.clock, watch=watch
        )
        maintenance.run_once()
        health.start()
        maintenance.start()
        servers.append(
            api_server.serve(
                [ca_service(handlers), *signer_services(signer, tls_caller)],
                listeners,
                env,
                health,
                max_request_bytes=config.max_request_bytes,
                reuse_port=reuse_port,
            )
        )
        sa = config.service_account
        if sa.socket is not None and serve_socket:
            # A server of its own: the socket's callers are local (kube-apiserver), and
            # must not reach kubeca.v1 through it.
            socket = UnixSocket(sa.socket, sa.socket_mode, sa.socket_group)
            servers.append(
                api_server.serve(
                    signer_services(signer, local_caller),
                    [socket],
                    env,
                    health,
                    max_request_bytes=config.max_request_bytes,
                    reuse_port=False,
                )
            )
    except BaseException:
        for server in servers:
            server.stop(0)
        core.close()
        raise
    return Worker(core, health, maintenance, servers)
