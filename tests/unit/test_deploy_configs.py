"""The example configs in deploy/config/ stay valid as the config schema changes."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubeca_client.keys import KeyAlgorithm
from kubeca_server.config import load_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
EXAMPLES = sorted(
    [*(DEPLOY / "config").glob("*.toml"), DEPLOY / "replicas" / "kubeca-replica.toml"]
)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_config_loads(path: Path) -> None:
    config = load_config(path)
    assert set(config.authorities) == {
        "kubernetes-ca",
        "etcd-ca",
        "front-proxy-ca",
        "kubeca-service-ca",
    }
    assert config.hsm.pin_file is not None or config.hsm.pin_env is not None
    assert config.enable_super_admin is False
    assert config.listen_bootstrap is not None
    assert config.grants, "an example config shows at least one grant"
    for grant in config.grants.values():
        assert "super-admin" not in grant.profiles


def test_there_are_examples_for_softhsm_and_a_hardware_hsm() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"kubeca.softhsm.toml", "kubeca.hsm.toml"} <= names
    hsm = load_config(EXAMPLES[[p.name for p in EXAMPLES].index("kubeca.hsm.toml")])
    assert hsm.authorities["etcd-ca"].key_algorithm is KeyAlgorithm.ECDSA_P384


def test_the_replica_example_shares_a_postgresql_store_and_a_network_hsm() -> None:
    config = load_config(DEPLOY / "replicas" / "kubeca-replica.toml")
    assert config.store.kind == "postgresql" and "sslmode=verify-full" in config.store.url
    assert config.store.password_file is not None
    assert "P11_KIT_SERVER_ADDRESS" in config.hsm.environment


def test_the_replica_client_example_names_both_replicas() -> None:
    from kubeca_client.config import load_client_config

    config = load_client_config(DEPLOY / "replicas" / "client.toml")
    assert len(config.addresses) == 2
