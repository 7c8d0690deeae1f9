"""The example configs in deploy/config/ stay valid as the config schema changes."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubeca_client.keys import KeyAlgorithm
from kubeca_server.config import load_config

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "deploy" / "config").glob("*.toml"))


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
