"""config.py: TOML parsed into frozen dataclasses; every error names the key."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from kubeca_client.errors import ConfigError
from kubeca_client.keys import KeyAlgorithm
from kubeca_server.ca import lifecycle
from kubeca_server.config import ServerConfig, load_config, parse_config

from tests.unit.conftest import minimal_config


def parse(tmp_path: Path, **extra: Any) -> ServerConfig:
    return parse_config(minimal_config(tmp_path, **extra), tmp_path / "kubeca.toml")


def refuse(tmp_path: Path, raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, tmp_path / "kubeca.toml")
    return caught.value.message


def test_defaults(tmp_path: Path) -> None:
    config = parse(tmp_path)
    assert config.listen == "127.0.0.1:7443"
    assert config.state_dir == tmp_path / "state"
    assert config.ca_dir == tmp_path / "state" / "ca"
    assert config.audit_log == tmp_path / "state" / "audit.log"
    assert config.enable_super_admin is False
    assert config.leaf.default_lifetime == timedelta(days=365)
    assert config.leaf.max_lifetime == timedelta(days=365)
    assert sorted(config.authorities) == [
        "etcd-ca",
        "front-proxy-ca",
        "kubeca-service-ca",
        "kubernetes-ca",
    ]
    assert config.listen_bootstrap is None
    assert config.grants == {}
    assert config.tls.server_names == ("localhost", "127.0.0.1")
    for authority in config.authorities.values():
        assert authority.key_algorithm is KeyAlgorithm.ECDSA_P256
        assert authority.lifetime == timedelta(days=3650)
        assert lifecycle.key_label(authority.name, 1) == f"kubeca/{authority.name}"
    assert config.hsm.pin_env == "X"
    assert config.hsm.pin_file is None


def test_the_store_defaults_to_sqlite_in_the_state_dir(tmp_path: Path) -> None:
    store = parse(tmp_path).store
    assert store.sqlite_path == tmp_path / "state" / "kubeca.db"
    assert store.url == f"sqlite:///{tmp_path / 'state' / 'kubeca.db'}"


def test_a_relative_store_path_resolves_against_the_config_file(tmp_path: Path) -> None:
    store = parse(tmp_path, store={"url": "sqlite:///db/kubeca.db"}).store
    assert store.sqlite_path == tmp_path / "db" / "kubeca.db"


@pytest.mark.parametrize("url", ["mysql://db/kubeca", "sqlite:", "sqlite://", "kubeca.db"])
def test_a_store_url_this_kubeca_does_not_know_is_refused(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError, match=r"store\.url.*not a store URL"):
        parse(tmp_path, store={"url": url})


def test_a_postgresql_url_chooses_the_shared_store_with_its_password_from_a_file(
    tmp_path: Path,
) -> None:
    (tmp_path / "db-password").write_text("s3cret\n")
    store = parse(
        tmp_path,
        store={
            "url": "postgresql://kubeca@db.example:5432/kubeca?sslmode=verify-full",
            "password_file": "db-password",
        },
    ).store
    assert store.kind == "postgresql" and store.sqlite_path is None
    assert store.read_password() == "s3cret"


def test_the_store_password_may_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = parse(
        tmp_path, store={"url": "postgresql://kubeca@db/kubeca", "password_env": "KUBECA_DB_PW"}
    ).store
    with pytest.raises(ConfigError, match="KUBECA_DB_PW is not set"):
        store.read_password()
    monkeypatch.setenv("KUBECA_DB_PW", "from-env")
    assert store.read_password() == "from-env"


def test_a_password_in_the_url_of_a_world_readable_config_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "kubeca.toml"
    config.write_text("")
    config.chmod(0o644)
    raw = minimal_config(tmp_path, store={"url": "postgresql://kubeca:hunter2@db/kubeca"})
    with pytest.raises(ConfigError, match="world-readable") as caught:
        parse_config(raw, config)
    assert "hunter2" not in caught.value.message
    config.chmod(0o600)
    store = parse_config(raw, config).store
    # Messages and logs name the store without its password.
    assert "hunter2" not in store.display and store.display.startswith("postgresql://kubeca:")


def test_a_password_file_beside_an_sqlite_url_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="for PostgreSQL URLs"):
        parse(tmp_path, store={"url": "sqlite:///k.db", "password_file": "pw"})


def test_config_is_frozen(tmp_path: Path) -> None:
    config = parse(tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.listen = "0.0.0.0:1"  # type: ignore[misc]


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    raw = {"hsm": {"token_label": "t", "pin_file": "pin"}, "state_dir": "st", "audit_log": "a.log"}
    config = parse_config(raw, tmp_path / "etc" / "kubeca.toml")
    assert config.state_dir == (tmp_path / "etc" / "st").resolve()
    assert config.audit_log == (tmp_path / "etc" / "a.log").resolve()
    assert config.hsm.pin_file == (tmp_path / "etc" / "pin").resolve()


def test_overrides(tmp_path: Path) -> None:
    config = parse(
        tmp_path,
        authorities={"etcd-ca": {"key_algorithm": "rsa-3072", "lifetime_days": 20}},
        leaf={"default_lifetime_days": 30, "max_lifetime_days": 90},
        profiles={"enable_super_admin": True},
    )
    assert config.authorities["etcd-ca"].key_algorithm is KeyAlgorithm.RSA_3072
    assert config.authorities["etcd-ca"].lifetime == timedelta(days=20)
    assert config.authorities["kubernetes-ca"].key_algorithm is KeyAlgorithm.ECDSA_P256
    assert config.leaf.default_lifetime == timedelta(days=30)
    assert config.leaf.max_lifetime == timedelta(days=90)
    assert config.enable_super_admin is True


def test_default_leaf_lifetime_follows_a_lower_max(tmp_path: Path) -> None:
    config = parse(tmp_path, leaf={"max_lifetime_days": 30})
    assert config.leaf.default_lifetime == timedelta(days=30)


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ({"listne": "x:1"}, "'listne'"),
        ({"hsm": {"token_label": "t", "pin_env": "X", "pin": "1234"}}, "'hsm.pin'"),
        ({"authorities": {"root-ca": {}}}, "'authorities.root-ca'"),
        ({"authorities": {"etcd-ca": {"key_size": 4096}}}, "'authorities.etcd-ca.key_size'"),
        ({"leaf": {"lifetime_days": 3}}, "'leaf.lifetime_days'"),
        ({"profiles": {"enable_superadmin": True}}, "'profiles.enable_superadmin'"),
    ],
)
def test_unknown_key_is_named(tmp_path: Path, extra: dict[str, Any], key: str) -> None:
    raw = minimal_config(tmp_path)
    raw.update(extra)
    message = refuse(tmp_path, raw)
    assert "unknown key" in message
    assert key in message


def test_bad_key_algorithm_names_the_key_and_the_choices(tmp_path: Path) -> None:
    raw = minimal_config(tmp_path, authorities={"front-proxy-ca": {"key_algorithm": "DSA-1024"}})
    message = refuse(tmp_path, raw)
    assert "authorities.front-proxy-ca.key_algorithm" in message
    assert "DSA-1024" in message
    assert "ECDSA-P256" in message


@pytest.mark.parametrize(
    "hsm",
    [
        {"token_label": "t", "pin_env": "X", "pin_file": "pin"},
        {"token_label": "t"},
    ],
)
def test_exactly_one_pin_source(tmp_path: Path, hsm: dict[str, str]) -> None:
    raw = minimal_config(tmp_path, hsm=hsm)
    message = refuse(tmp_path, raw)
    assert "hsm.pin_file" in message
    assert "hsm.pin_env" in message


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({"listen": 7443}, "listen must be a non-empty string"),
        ({"listen": "7443"}, "listen must be HOST:PORT"),
        ({"state_dir": ""}, "state_dir must be a non-empty string"),
        ({"hsm": "softhsm"}, "hsm must be a table"),
        ({"hsm": {"pin_env": "X"}}, "hsm.token_label must be a non-empty string"),
        ({"hsm": {"token_label": "t", "pin_env": 3}}, "hsm.pin_env must be a non-empty string"),
        ({"max_request_bytes": "big"}, "max_request_bytes must be an integer"),
        ({"max_request_bytes": True}, "max_request_bytes must be an integer"),
        ({"max_request_bytes": 10}, "max_request_bytes must be between"),
        (
            {"authorities": {"etcd-ca": {"lifetime_days": 1.5}}},
            "authorities.etcd-ca.lifetime_days must be an integer",
        ),
        (
            {"authorities": {"etcd-ca": {"lifetime_days": 0}}},
            "authorities.etcd-ca.lifetime_days must be between",
        ),
        ({"authorities": {"etcd-ca": "RSA-2048"}}, "authorities.etcd-ca must be a table"),
        ({"leaf": {"max_lifetime_days": "365"}}, "leaf.max_lifetime_days must be an integer"),
        (
            {"leaf": {"max_lifetime_days": 30, "default_lifetime_days": 31}},
            "leaf.default_lifetime_days must be between 1 and 30",
        ),
        ({"profiles": {"enable_super_admin": "yes"}}, "profiles.enable_super_admin must be true"),
        ({"profiles": {"enable_super_admin": 1}}, "profiles.enable_super_admin must be true"),
    ],
)
def test_bad_value_names_the_key(tmp_path: Path, extra: dict[str, Any], says: str) -> None:
    raw = minimal_config(tmp_path)
    raw.update(extra)
    assert says in refuse(tmp_path, raw)


def test_read_pin_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("X", " 1234\n")
    assert parse(tmp_path).hsm.read_pin() == "1234"


def test_read_pin_names_the_missing_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("X", raising=False)
    with pytest.raises(ConfigError, match=r"hsm\.pin_env: environment variable X is not set"):
        parse(tmp_path).hsm.read_pin()


def test_read_pin_from_file(tmp_path: Path) -> None:
    (tmp_path / "pin").write_text("5678\n")
    raw = {"hsm": {"token_label": "t", "pin_file": "pin"}}
    assert parse_config(raw, tmp_path / "kubeca.toml").hsm.read_pin() == "5678"


@pytest.mark.parametrize(("content", "says"), [(None, "cannot read"), ("\n", "is empty")])
def test_read_pin_file_problems_name_the_key(
    tmp_path: Path, content: str | None, says: str
) -> None:
    if content is not None:
        (tmp_path / "pin").write_text(content)
    raw = {"hsm": {"token_label": "t", "pin_file": "pin"}}
    with pytest.raises(ConfigError, match=f"hsm.pin_file: .*{says}"):
        parse_config(raw, tmp_path / "kubeca.toml").hsm.read_pin()


def test_load_config_reads_toml(tmp_path: Path) -> None:
    path = tmp_path / "kubeca.toml"
    path.write_text(
        'listen = "0.0.0.0:9443"\n[hsm]\ntoken_label = "tok"\npin_env = "PIN"\n'
        '[authorities.kubernetes-ca]\nkey_algorithm = "RSA-2048"\n'
    )
    config = load_config(path)
    assert config.listen == "0.0.0.0:9443"
    assert config.hsm.token_label == "tok"  # a label, not a secret
    assert config.authorities["kubernetes-ca"].key_algorithm is KeyAlgorithm.RSA_2048
    assert config.path == path


def test_load_config_reports_bad_toml(tmp_path: Path) -> None:
    path = tmp_path / "kubeca.toml"
    path.write_text("listen = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


def test_load_config_reports_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "absent.toml")


def test_the_hsm_module_environment_comes_from_the_config(tmp_path: Path) -> None:
    address = "unix:path=/run/kubeca/p11.sock"
    config = parse(
        tmp_path,
        hsm={
            "token_label": "t",
            "pin_env": "X",
            "environment": {"P11_KIT_SERVER_ADDRESS": address},
        },
    )
    assert config.hsm.environment == {"P11_KIT_SERVER_ADDRESS": address}
    message = refuse(
        tmp_path,
        minimal_config(
            tmp_path, hsm={"token_label": "t", "pin_env": "X", "environment": {"A=B": "c"}}
        ),
    )
    assert "not an environment variable name" in message
