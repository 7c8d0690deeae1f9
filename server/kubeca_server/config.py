"""The server's TOML configuration, parsed once into frozen dataclasses.

A wrong configuration stops the server at start with a message that names the key.
Secrets (the HSM PIN) are never in this file: it names a file or an environment
variable that holds them.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from kubeca_client.authorities import ALL_CAS
from kubeca_client.errors import ConfigError
from kubeca_client.keys import KeyAlgorithm
from kubeca_client.names import IPNetwork, canonical_ip

from kubeca_server.profiles import PROFILES

DEFAULT_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024
# kubeadm's default --service-account-issuer.
DEFAULT_ISSUER = "https://kubernetes.default.svc.cluster.local"
SOCKET_MODES = (0o600, 0o660)


@dataclass(frozen=True)
class HsmConfig:
    module: str
    token_label: str
    pin_file: Path | None
    pin_env: str | None
    # What the module reads from its environment (e.g. P11_KIT_SERVER_ADDRESS for
    # p11-kit-client.so, SOFTHSM2_CONF), set before it is loaded: from the config, so no
    # wrapper script has to remember it. Never the PIN: that is pin_file or pin_env.
    environment: Mapping[str, str] = field(default_factory=dict)

    def read_pin(self) -> str:
        if self.pin_file is not None:
            try:
                pin = self.pin_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(
                    f"hsm.pin_file: cannot read {self.pin_file}: {exc.strerror}"
                ) from None
            except UnicodeDecodeError:
                raise ConfigError(f"hsm.pin_file: {self.pin_file} is not UTF-8 text") from None
            if not pin:
                raise ConfigError(f"hsm.pin_file: {self.pin_file} is empty")
            return pin
        assert self.pin_env is not None
        pin = os.environ.get(self.pin_env, "").strip()
        if not pin:
            raise ConfigError(f"hsm.pin_env: environment variable {self.pin_env} is not set")
        return pin


@dataclass(frozen=True)
class AuthorityConfig:
    name: str
    key_algorithm: KeyAlgorithm  # for new generations; existing keys are never replaced
    lifetime: timedelta


@dataclass(frozen=True)
class StoreConfig:
    """Where the ledger, inventory, tokens and CA generations live: an SQLite file (the
    embedded default) or a PostgreSQL database that several replicas share."""

    url: str
    sqlite_path: Path | None  # set for sqlite:// URLs only
    password_file: Path | None = None  # PostgreSQL's password, when not in the URL
    password_env: str | None = None

    @property
    def kind(self) -> str:
        return "sqlite" if self.sqlite_path is not None else "postgresql"

    @property
    def display(self) -> str:
        """The URL fit for messages and logs: any password in it replaced."""
        return redact_url(self.url)

    def read_password(self) -> str | None:
        if self.password_file is not None:
            try:
                password = self.password_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(
                    f"store.password_file: cannot read {self.password_file}: {exc.strerror}"
                ) from None
            except UnicodeDecodeError:
                raise ConfigError(
                    f"store.password_file: {self.password_file} is not UTF-8 text"
                ) from None
            if not password:
                raise ConfigError(f"store.password_file: {self.password_file} is empty")
            return password
        if self.password_env is not None:
            password = os.environ.get(self.password_env, "").strip()
            if not password:
                raise ConfigError(
                    f"store.password_env: environment variable {self.password_env} is not set"
                )
            return password
        return None  # libpq's own ways then apply (PGPASSFILE, certificates, peer)


@dataclass(frozen=True)
class LeafConfig:
    default_lifetime: timedelta
    max_lifetime: timedelta


@dataclass(frozen=True)
class TlsConfig:
    """The service's own TLS certificate, signed by the service CA."""

    server_names: tuple[str, ...]
    certificate_lifetime: timedelta


@dataclass(frozen=True)
class ServiceAccountConfig:
    """The service-account signing key and the ExternalJWTSigner that serves it."""

    key_algorithm: KeyAlgorithm  # for new generations; existing keys are never replaced
    issuers: frozenset[str]  # the iss values a token may carry (--service-account-issuer)
    max_token_expiration: timedelta
    refresh_hint_seconds: int
    socket: Path | None  # where kube-apiserver dials the signer on this host, if here
    socket_mode: int
    socket_group: str | None


DEFAULT_SERVICE_ACCOUNT = ServiceAccountConfig(
    KeyAlgorithm.RSA_2048,
    frozenset({DEFAULT_ISSUER}),
    timedelta(seconds=86400),
    60,
    None,
    0o600,
    None,
)


@dataclass(frozen=True)
class Grant:
    """What one operator identity (its client certificate's CN) may obtain."""

    identity: str
    profiles: frozenset[str]  # "*" is every profile except those granting system:masters
    node_names: tuple[str, ...]  # exact names or fnmatch patterns ("worker-*", "*")
    san_dns: tuple[str, ...]  # exact names, ".suffix" for subdomains, or "*"
    san_cidrs: tuple[IPNetwork, ...]
    max_lifetime: timedelta
    bootstrap_tokens: bool
    revoke: bool = False
    # Sign service-account tokens through ExternalJWTSigner over mutual TLS: what
    # `kubeca signer-proxy` on a control-plane node needs. It mints any identity in the
    # cluster, so it is its own right, never implied by a profile wildcard.
    service_account_signing: bool = False


@dataclass(frozen=True)
class ServerConfig:
    path: Path
    listen: str
    listen_bootstrap: str | None
    metrics_listen: str | None
    state_dir: Path
    audit_log: Path
    max_request_bytes: int
    store: StoreConfig
    hsm: HsmConfig
    authorities: Mapping[str, AuthorityConfig]  # the three cluster CAs and the service CA
    leaf: LeafConfig
    enable_super_admin: bool
    tls: TlsConfig
    grants: Mapping[str, Grant]
    service_account: ServiceAccountConfig = DEFAULT_SERVICE_ACCOUNT

    @property
    def ca_dir(self) -> Path:
        return self.state_dir / "ca"

    @property
    def tls_dir(self) -> Path:
        return self.state_dir / "tls"

    @property
    def crl_dir(self) -> Path:
        return self.state_dir / "crl"

    @property
    def metrics_dir(self) -> Path:
        return self.state_dir / "metrics"


class _Table:
    """A TOML table that remembers its dotted path, for error messages."""

    def __init__(self, data: Mapping[str, Any], path: str, allowed: set[str]) -> None:
        unknown = sorted(set(data) - allowed)
        if unknown:
            where = f"[{path}]" if path else "the top level"
            raise ConfigError(
                f"unknown key {self._key(path, unknown[0])!r} in {where}; "
                f"known keys: {', '.join(sorted(allowed))}"
            )
        self.data = data
        self.path = path

    @staticmethod
    def _key(path: str, key: str) -> str:
        return f"{path}.{key}" if path else key

    def key(self, key: str) -> str:
        return self._key(self.path, key)

    def table(self, key: str, allowed: set[str]) -> _Table:
        value = self.data.get(key, {})
        if not isinstance(value, dict):
            raise ConfigError(f"{self.key(key)} must be a table")
        return _Table(value, self.key(key), allowed)

    def string(self, key: str, default: str | None = None) -> str:
        value = self.data.get(key, default)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{self.key(key)} must be a non-empty string")
        return value

    def optional_string(self, key: str) -> str | None:
        if key not in self.data:
            return None
        return self.string(key)

    def strings(self, key: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        value = self.data.get(key, list(default))
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{self.key(key)} must be a list of non-empty strings")
        return tuple(value)

    def integer(self, key: str, default: int, minimum: int, maximum: int) -> int:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{self.key(key)} must be an integer")
        if not minimum <= value <= maximum:
            raise ConfigError(f"{self.key(key)} must be between {minimum} and {maximum}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{self.key(key)} must be true or false")
        return value


def load_config(path: Path) -> ServerConfig:
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from None
    return parse_config(raw, path)


def parse_config(raw: Mapping[str, Any], path: Path) -> ServerConfig:
    base = path.parent
    top = _Table(
        raw,
        "",
        {
            "listen",
            "state_dir",
            "audit_log",
            "max_request_bytes",
            "hsm",
            "authorities",
            "leaf",
            "profiles",
            "listen_bootstrap",
            "metrics_listen",
            "tls",
            "grants",
            "store",
            "service_account",
        },
    )

    def resolve(text: str) -> Path:
        candidate = Path(text)
        return candidate if candidate.is_absolute() else (base / candidate).resolve()

    listen = top.string("listen", "127.0.0.1:7443")
    if ":" not in listen:
        raise ConfigError("listen must be HOST:PORT, e.g. 127.0.0.1:7443")
    metrics_listen = top.optional_string("metrics_listen")
    if metrics_listen is not None and ":" not in metrics_listen:
        raise ConfigError("metrics_listen must be HOST:PORT, e.g. 127.0.0.1:9464")
    listen_bootstrap = top.optional_string("listen_bootstrap")
    if listen_bootstrap is not None and (":" not in listen_bootstrap or listen_bootstrap == listen):
        raise ConfigError("listen_bootstrap must be HOST:PORT, a port other than listen's")
    state_dir = resolve(top.string("state_dir", "state"))
    audit_log = resolve(top.string("audit_log", str(state_dir / "audit.log")))
    store = _store(
        top.table("store", {"url", "password_file", "password_env"}), path, state_dir, resolve
    )

    hsm_table = top.table("hsm", {"module", "token_label", "pin_file", "pin_env", "environment"})
    environment_table = hsm_table.table("environment", set(hsm_table.data.get("environment", {})))
    environment = {}
    for name in environment_table.data:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ConfigError(f"hsm.environment: {name[:40]!r} is not an environment variable name")
        environment[name] = environment_table.string(name)
    pin_file = hsm_table.optional_string("pin_file")
    pin_env = hsm_table.optional_string("pin_env")
    if (pin_file is None) == (pin_env is None):
        raise ConfigError("set exactly one of hsm.pin_file and hsm.pin_env")
    hsm = HsmConfig(
        module=hsm_table.string("module", DEFAULT_MODULE),
        token_label=hsm_table.string("token_label"),
        pin_file=resolve(pin_file) if pin_file else None,
        pin_env=pin_env,
        environment=environment,
    )

    authorities_table = top.table("authorities", set(ALL_CAS))
    authorities: dict[str, AuthorityConfig] = {}
    for name in ALL_CAS:
        table = authorities_table.table(name, {"key_algorithm", "lifetime_days"})
        algorithm_text = table.string("key_algorithm", KeyAlgorithm.ECDSA_P256.value)
        try:
            algorithm = KeyAlgorithm.parse(algorithm_text)
        except ValueError as exc:
            raise ConfigError(f"{table.key('key_algorithm')}: {exc}") from None
        days = table.integer("lifetime_days", 3650, 1, 36500)
        authorities[name] = AuthorityConfig(name, algorithm, timedelta(days=days))

    leaf_table = top.table("leaf", {"default_lifetime_days", "max_lifetime_days"})
    max_days = leaf_table.integer("max_lifetime_days", 365, 1, 3650)
    default_days = leaf_table.integer("default_lifetime_days", min(365, max_days), 1, max_days)

    profiles_table = top.table("profiles", {"enable_super_admin"})

    tls_table = top.table("tls", {"server_names", "certificate_lifetime_days"})
    listen_hosts = [
        address.rpartition(":")[0].strip("[]")
        for address in (listen, listen_bootstrap)
        if address is not None
    ]
    names = tls_table.strings("server_names", ("localhost", "127.0.0.1"))
    # A wildcard bind address, in any of its forms, has no name to put in a certificate.
    extra_names = [h for h in listen_hosts if not _binds_everywhere(h) and h not in names]
    tls = TlsConfig(
        server_names=(*names, *extra_names),
        certificate_lifetime=timedelta(
            days=tls_table.integer("certificate_lifetime_days", 90, 1, 825)
        ),
    )

    grants_table = top.table("grants", set(top.data.get("grants", {})))
    grants = {
        identity: _grant(grants_table.table(identity, GRANT_KEYS), identity)
        for identity in grants_table.data
    }

    return ServerConfig(
        path=path,
        listen=listen,
        listen_bootstrap=listen_bootstrap,
        metrics_listen=metrics_listen,
        state_dir=state_dir,
        audit_log=audit_log,
        max_request_bytes=top.integer(
            "max_request_bytes", DEFAULT_MAX_REQUEST_BYTES, 4096, 4 * 1024 * 1024
        ),
        store=store,
        hsm=hsm,
        authorities=authorities,
        leaf=LeafConfig(timedelta(days=default_days), timedelta(days=max_days)),
        enable_super_admin=profiles_table.boolean("enable_super_admin", False),
        tls=tls,
        grants=grants,
        service_account=_service_account(
            top.table("service_account", SERVICE_ACCOUNT_KEYS), resolve
        ),
    )


SERVICE_ACCOUNT_KEYS = {
    "key_algorithm",
    "issuers",
    "max_token_expiration_seconds",
    "refresh_hint_seconds",
    "socket",
    "socket_mode",
    "socket_group",
}


def _service_account(table: _Table, resolve: Callable[[str], Path]) -> ServiceAccountConfig:
    text = table.string("key_algorithm", KeyAlgorithm.RSA_2048.value)
    try:
        algorithm = KeyAlgorithm.parse(text)
    except ValueError as exc:
        raise ConfigError(f"{table.key('key_algorithm')}: {exc}") from None
    if algorithm not in (KeyAlgorithm.RSA_2048, KeyAlgorithm.ECDSA_P256):
        # RS256 and ES256: what every kube-apiserver and JWT library verifies.
        raise ConfigError(f"{table.key('key_algorithm')} must be RSA-2048 or ECDSA-P256")
    mode = table.integer("socket_mode", 0o600, 0, 0o777)
    if mode not in SOCKET_MODES:
        raise ConfigError(f"{table.key('socket_mode')} must be 0o600 or 0o660 (with socket_group)")
    group = table.optional_string("socket_group")
    if mode == 0o660 and group is None:
        raise ConfigError(f"{table.key('socket_mode')} 0o660 needs {table.key('socket_group')}")
    socket = table.optional_string("socket")
    issuers = table.strings("issuers", (DEFAULT_ISSUER,))
    if not issuers:
        raise ConfigError(f"{table.key('issuers')} must name at least one issuer")
    return ServiceAccountConfig(
        key_algorithm=algorithm,
        issuers=frozenset(issuers),
        max_token_expiration=timedelta(
            seconds=table.integer("max_token_expiration_seconds", 86400, 600, 2 * 366 * 86400)
        ),
        refresh_hint_seconds=table.integer("refresh_hint_seconds", 60, 1, 86400),
        socket=resolve(socket) if socket else None,
        socket_mode=mode,
        socket_group=group,
    )


def _store(
    table: _Table, config_path: Path, state_dir: Path, resolve: Callable[[str], Path]
) -> StoreConfig:
    # SQLAlchemy's spelling: sqlite:///relative/path (from the config's directory) or
    # sqlite:////absolute/path; or libpq's: postgresql://user@host:port/dbname?sslmode=...
    url = table.string("url", f"sqlite:///{state_dir / 'kubeca.db'}")
    scheme, sep, rest = url.partition("://")
    password_file = table.optional_string("password_file")
    password_env = table.optional_string("password_env")
    if sep and scheme in ("postgresql", "postgres"):
        if password_file is not None and password_env is not None:
            raise ConfigError("set at most one of store.password_file and store.password_env")
        _check_postgres_url(table, url, config_path)
        return StoreConfig(
            url=url,
            sqlite_path=None,
            password_file=resolve(password_file) if password_file else None,
            password_env=password_env,
        )
    if not sep or scheme != "sqlite" or not rest.startswith("/") or len(rest) < 2:
        raise ConfigError(
            f"{table.key('url')}: {redact_url(url)[:80]!r} is not a store URL this kubeca "
            "knows (sqlite:///PATH or postgresql://USER@HOST:PORT/DBNAME)"
        )
    if password_file is not None or password_env is not None:
        raise ConfigError("store.password_file and store.password_env are for PostgreSQL URLs")
    return StoreConfig(url=url, sqlite_path=resolve(rest[1:]))


def _check_postgres_url(table: _Table, url: str, config_path: Path) -> None:
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts = conninfo_to_dict(url)
    except Exception:
        # libpq's message may quote the URL, password and all: say only where.
        raise ConfigError(f"{table.key('url')}: not a PostgreSQL URL libpq can parse") from None
    if "password" in parts:
        try:
            mode = config_path.stat().st_mode
        except OSError:
            mode = 0o777
        # A password in a file anyone on the host can read is no secret.
        if mode & 0o004:
            raise ConfigError(
                f"{table.key('url')}: the URL holds a password and {config_path} is "
                "world-readable; use store.password_file or store.password_env instead"
            )


def redact_url(url: str) -> str:
    """``url`` with the password of its user-info (and any password= parameter) hidden."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, tail = rest.partition("/")
    userinfo, at, host = authority.rpartition("@")
    if at and ":" in userinfo:
        authority = f"{userinfo.partition(':')[0]}:***@{host}"
    tail = re.sub(r"(?i)(password=)[^&]*", r"\1***", tail)
    return f"{scheme}{sep}{authority}{slash}{tail}"


def _binds_everywhere(host: str) -> bool:
    if not host:
        return True
    try:
        return canonical_ip(ipaddress.ip_address(host)).is_unspecified
    except ValueError:
        return False


GRANT_KEYS = {
    "profiles",
    "node_names",
    "san_dns",
    "san_cidrs",
    "max_lifetime_days",
    "bootstrap_tokens",
    "revoke",
    "service_account_signing",
}


def _grant(table: _Table, identity: str) -> Grant:
    cidrs = []
    for text in table.strings("san_cidrs"):
        try:
            cidrs.append(ipaddress.ip_network(text, strict=True))
        except ValueError:
            raise ConfigError(f"{table.key('san_cidrs')}: {text!r} is not a CIDR") from None
    profiles = frozenset(table.strings("profiles"))
    unknown = sorted(profiles - set(PROFILES) - {"*"})
    if unknown:
        raise ConfigError(
            f"{table.key('profiles')}: no profile named {unknown[0]!r} (known: "
            f"{', '.join(PROFILES)}, or '*')"
        )
    return Grant(
        identity=identity,
        profiles=profiles,
        node_names=table.strings("node_names"),
        san_dns=table.strings("san_dns"),
        san_cidrs=tuple(cidrs),
        max_lifetime=timedelta(days=table.integer("max_lifetime_days", 365, 1, 3650)),
        bootstrap_tokens=table.boolean("bootstrap_tokens", False),
        revoke=table.boolean("revoke", False),
        service_account_signing=table.boolean("service_account_signing", False),
    )
