"""Fixtures for the unit tests: in-memory CAs, and a world of the domain over them.

No HSM, no subprocess, no network. The linter and the CAs are made once per session
(key generation and lint are the slow parts); each test gets a ``World`` of its own: a
fresh store (in memory unless it asks for SQLite), a ledger with its own mirror file,
and the pipeline, inventory, tokens and CRLs over them, so it reads exactly its own
records.

Helpers shared by the test files live here too: ``issue`` (one request through the
pipeline), ``inventory`` and ``chain`` (what the store holds), ``Clock`` (time a test
moves by hand) and ``replace_keys`` (CA keys a test watches or breaks).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubeca_server.app import Core, build_core
from kubeca_server.ca import lifecycle
from kubeca_server.ca.authority import CertificateAuthority
from kubeca_server.ca.lint import Linter
from kubeca_server.ca.signer import Signer
from kubeca_server.config import Grant, ServerConfig, parse_config
from kubeca_server.issuance.model import TOKEN, Caller, IssuedCertificate, IssueRequest
from kubeca_server.keys import CAPrivateKey
from kubeca_server.keys.memory import MemoryBackend
from kubeca_server.ledger.audit import Ledger
from kubeca_server.ledger.chain import ChainRow
from kubeca_server.ledger.mirror import Mirror
from kubeca_server.store import CertificateRow, InventoryCursor, InventoryQuery, Store
from kubeca_server.store.memory import MemoryStore
from kubeca_server.store.sqlite import SQLiteStore

from tests.unit.helpers import PROFILE_PARAMS, make_csr


def minimal_config(directory: Path, **extra: Any) -> dict[str, Any]:
    """The smallest raw config parse_config accepts, plus ``extra`` top-level keys."""
    raw: dict[str, Any] = {
        "hsm": {"token_label": "t", "pin_env": "X"},
        "state_dir": str(directory / "state"),
    }
    raw.update(extra)
    return raw


@dataclass(frozen=True)
class CASet:
    """The four CAs in memory, with the config, backend and store that made them."""

    config: ServerConfig
    backend: MemoryBackend
    store: MemoryStore  # holds the CA generations (and their audit records)
    authorities: Mapping[str, CertificateAuthority]


def make_ca_set(directory: Path, linter: Linter, **extra: Any) -> CASet:
    config = parse_config(minimal_config(directory, **extra), directory / "kubeca.toml")
    backend = MemoryBackend()
    store = MemoryStore()
    ledger = Ledger(store, Mirror(directory / "init-audit.log"))
    lifecycle.initialize(config, backend, ledger, linter)
    return CASet(config, backend, store, lifecycle.load(config, backend, store, linter))


# The unit tests' caller may have everything, super-admin included, so each test sees
# the profile and request rules alone; test_grants.py covers grants.
EVERYTHING = Grant(
    identity="test-caller",
    profiles=frozenset({"*", "super-admin"}),
    node_names=("*",),
    san_dns=("*",),
    san_cidrs=(ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")),
    max_lifetime=timedelta(days=3650),
    bootstrap_tokens=True,
    revoke=True,
)
GRANTS = {EVERYTHING.identity: EVERYTHING}
CALLER = Caller(EVERYTHING.identity)


def grant(identity: str = EVERYTHING.identity, **changes: Any) -> Grant:
    """EVERYTHING with ``changes``: the one rule a test is about, the rest wide open."""
    return dataclasses.replace(EVERYTHING, identity=identity, **changes)


def token_caller(token: str) -> Caller:
    """A node presenting ``token``, as the API layer identifies it."""
    token_id = token.split(".", maxsplit=1)[0][:6]
    return Caller(f"token:{token_id}", "ipv4:10.0.0.21:4242", TOKEN, token)


class Clock:
    """A clock the test moves by hand; it starts now unless told otherwise."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now or datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@dataclass
class World:
    """The domain of one test: the session's CAs over this test's own store."""

    core: Core
    store: Store
    audit_path: Path
    closers: list[Callable[[], None]] = field(default_factory=list)

    @property
    def pipeline(self) -> Any:
        return self.core.pipeline

    @property
    def ledger(self) -> Ledger:
        return self.core.ledger

    def records(self) -> list[dict[str, Any]]:
        """Every audit record this world wrote, from its mirror, in order."""
        return [json.loads(line) for line in self.audit_path.read_text().splitlines()]

    def events(self, event: str) -> list[dict[str, Any]]:
        return [r for r in self.records() if r["event"] == event]


WorldFactory = Callable[..., World]


@pytest.fixture(scope="session")
def linter() -> Linter:
    return Linter()


@pytest.fixture(scope="session")
def ca_set(linter: Linter, tmp_path_factory: pytest.TempPathFactory) -> CASet:
    """The default CAs: ECDSA-P256, ten years."""
    return make_ca_set(tmp_path_factory.mktemp("cas"), linter)


@pytest.fixture(scope="session")
def short_ca_set(linter: Linter, tmp_path_factory: pytest.TempPathFactory) -> CASet:
    """CAs that live one day, less than the default leaf lifetime."""
    return make_ca_set(
        tmp_path_factory.mktemp("short-cas"),
        linter,
        authorities={
            name: {"lifetime_days": 1} for name in ("kubernetes-ca", "etcd-ca", "front-proxy-ca")
        },
    )


@pytest.fixture
def make_world(ca_set: CASet, linter: Linter, tmp_path: Path) -> Iterator[WorldFactory]:
    """A factory of worlds over the default CAs (or ``cas``): ``sqlite=True`` for a real
    SQLite file instead of memory (or ``store``, one of the test's own), ``grants`` and
    ``enable_super_admin`` as the server config would give them, ``clock`` to play with
    time."""
    made: list[World] = []

    def make(
        *,
        cas: CASet | None = None,
        grants: Mapping[str, Grant] = GRANTS,
        enable_super_admin: bool = False,
        clock: Callable[[], datetime] | None = None,
        sqlite: bool = False,
        store: Store | None = None,
        name: str = "world",
    ) -> World:
        chosen = cas or ca_set
        directory = tmp_path / f"{name}-{len(made)}"
        directory.mkdir(parents=True)
        config = parse_config(
            minimal_config(directory, profiles={"enable_super_admin": enable_super_admin}),
            directory / "kubeca.toml",
        )
        config = _with_grants(config, grants)
        if store is None:
            store = SQLiteStore(directory / "kubeca.db", migrate=True) if sqlite else MemoryStore()
        _copy_generations(chosen.store, store)
        audit_path = directory / "audit.log"
        ledger = Ledger(store, Mirror(audit_path), clock or (lambda: datetime.now(UTC)))
        core = build_core(
            config, chosen.backend, ledger, linter, clock or (lambda: datetime.now(UTC))
        )
        world = World(core, store, audit_path)
        made.append(world)
        return world

    yield make
    for world in made:
        world.core.ledger.close()
        world.store.close()


@pytest.fixture
def world(make_world: WorldFactory) -> World:
    """The secure default: super-admin disabled, the all-granting test caller."""
    return make_world()


def _with_grants(config: ServerConfig, grants: Mapping[str, Grant]) -> ServerConfig:
    return dataclasses.replace(config, grants=dict(grants))


def _copy_generations(source: MemoryStore, target: Store) -> None:
    """The session's CA generations into a test's fresh store, as init put them."""
    with source.unit(read_only=True) as unit:
        rows = unit.generations.all()
    with target.unit() as unit:
        for row in rows:
            unit.generations.add(row)


# --- helpers over a world ----------------------------------------------------------------


def issue(
    world: World,
    profile: str = "admin",
    parameters: Mapping[str, str] | None = None,
    csr: bytes | None = None,
    lifetime: timedelta | None = None,
    *,
    caller: Caller = CALLER,
    force_new: bool = False,
) -> IssuedCertificate:
    """One request through the world's pipeline; a profile's usual parameters by default."""
    request = IssueRequest(
        profile,
        csr if csr is not None else make_csr(),
        dict(PROFILE_PARAMS.get(profile, {}) if parameters is None else parameters),
        lifetime,
        force_new,
    )
    issued: IssuedCertificate = world.pipeline.issue(caller, request)
    return issued


def inventory(store: Store) -> list[CertificateRow]:
    """Every certificate in the store's inventory, page after page."""
    rows: list[CertificateRow] = []
    cursor = None
    with store.unit(read_only=True) as unit:
        while page := unit.inventory.page(InventoryQuery(), cursor, 100):
            rows.extend(page)
            cursor = InventoryCursor(page[-1].not_after, page[-1].serial)
    return rows


def chain(store: Store) -> list[ChainRow]:
    """Every row of the store's audit chain, in order."""
    with store.unit(read_only=True) as unit:
        return unit.audit.rows(0, 100_000)


def replace_keys(
    world: World, cas: CASet, wrap: Callable[[CAPrivateKey], CAPrivateKey], linter: Linter
) -> None:
    """Swap every CA generation's key in the world's registry for ``wrap(key)``: a key
    that counts its signatures, blocks, or fails, as an HSM key object might."""
    swapped = {
        name: dataclasses.replace(
            ca,
            generations=tuple(
                dataclasses.replace(
                    generation,
                    signer=Signer(wrap(_key_of(cas, name, generation.number)), linter),
                )
                for generation in ca.generations
            ),
        )
        for name, ca in world.core.registry.snapshot().items()
    }
    world.core.registry.replace(swapped)


def _key_of(cas: CASet, authority: str, generation: int) -> CAPrivateKey:
    key = cas.backend.find_key(lifecycle.key_label(authority, generation))
    assert key is not None, (authority, generation)
    return key
