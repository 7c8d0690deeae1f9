"""Fixtures for the unit tests: in-memory CAs, an Authority over them, and its audit log.

No HSM, no subprocess, no network. The linter and the default CAs are made once per
session; each test gets its own audit log so it can read exactly its own records.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubeca_server.audit import AuditLog
from kubeca_server.authorities import CertificateAuthority, init_authorities, load_authorities
from kubeca_server.authority import Authority
from kubeca_server.config import SERVICE_CA, Grant, ServerConfig, parse_config
from kubeca_server.keys.memory import MemoryBackend
from kubeca_server.lint import Linter


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
    """Three CAs in memory, with the config and backend that made them."""

    config: ServerConfig
    backend: MemoryBackend
    authorities: Mapping[str, CertificateAuthority]


def make_ca_set(directory: Path, linter: Linter, **extra: Any) -> CASet:
    config = parse_config(minimal_config(directory, **extra), directory / "kubeca.toml")
    backend = MemoryBackend()
    init_authorities(config, backend, linter)
    authorities = load_authorities(config, backend)
    authorities.pop(SERVICE_CA)  # the service CA signs no cluster certificate
    return CASet(config, backend, authorities)


# The unit tests' caller may have everything, super-admin included, so each test sees
# the profile and request rules alone; tests/unit/test_grants.py covers grants.
EVERYTHING = Grant(
    identity="test-caller",
    profiles=frozenset({"*", "super-admin"}),
    node_names=("*",),
    san_dns=("*",),
    san_cidrs=(ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")),
    max_lifetime=timedelta(days=3650),
    bootstrap_tokens=True,
)
GRANTS = {EVERYTHING.identity: EVERYTHING}


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
def audit_path(tmp_path: Path) -> Path:
    return tmp_path / "audit.log"


@pytest.fixture
def audit(audit_path: Path) -> Iterator[AuditLog]:
    log = AuditLog(audit_path)
    yield log
    log.close()


AuthorityFactory = Callable[..., Authority]


@pytest.fixture
def make_authority(ca_set: CASet, audit: AuditLog, linter: Linter) -> AuthorityFactory:
    """An Authority over the default CAs (or ``cas``) writing to this test's audit log."""

    def make(
        *,
        enable_super_admin: bool = False,
        clock: Callable[[], datetime] | None = None,
        cas: CASet | None = None,
    ) -> Authority:
        chosen = cas or ca_set
        options: dict[str, Any] = {"enable_super_admin": enable_super_admin, "grants": GRANTS}
        if clock is not None:
            options["clock"] = clock
        return Authority(chosen.authorities, chosen.config.leaf, audit, linter, **options)

    return make


@pytest.fixture
def authority(make_authority: AuthorityFactory) -> Authority:
    """The secure default: super-admin disabled."""
    return make_authority()
