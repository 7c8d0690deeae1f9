"""[service_account]: the signer's settings, refused at load with the key named."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from kubeca_client.errors import ConfigError
from kubeca_client.keys import KeyAlgorithm
from kubeca_server.config import DEFAULT_ISSUER, parse_config

from tests.unit.conftest import minimal_config


def load(tmp_path: Path, **table: Any) -> Any:
    raw = minimal_config(tmp_path, service_account=table)
    return parse_config(raw, tmp_path / "kubeca.toml").service_account


def test_defaults_are_kubeadms_key_and_issuer_and_no_socket(tmp_path: Path) -> None:
    sa = load(tmp_path)
    assert sa.key_algorithm is KeyAlgorithm.RSA_2048
    assert sa.issuers == frozenset({DEFAULT_ISSUER})
    assert sa.max_token_expiration == timedelta(days=1)
    assert sa.refresh_hint_seconds > 0
    assert sa.socket is None and sa.socket_mode == 0o600


def test_a_socket_path_is_resolved_from_the_config_directory(tmp_path: Path) -> None:
    sa = load(tmp_path, socket="run/signer.sock", socket_mode=0o660, socket_group="kube")
    assert sa.socket == (tmp_path / "run/signer.sock").resolve()
    assert (sa.socket_mode, sa.socket_group) == (0o660, "kube")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"key_algorithm": "RSA-4096"}, "service_account.key_algorithm must be RSA-2048 or"),
        ({"key_algorithm": "DSA"}, "service_account.key_algorithm"),
        ({"max_token_expiration_seconds": 599}, "service_account.max_token_expiration_seconds"),
        ({"refresh_hint_seconds": 0}, "service_account.refresh_hint_seconds"),
        ({"socket_mode": 0o666}, "service_account.socket_mode must be 0o600 or 0o660"),
        ({"socket_mode": 0o660}, "needs service_account.socket_group"),
        ({"issuers": []}, "service_account.issuers"),
        ({"socket": 7}, "service_account.socket"),
        ({"sockett": "x"}, "unknown key 'service_account.sockett'"),
    ],
)
def test_wrong_settings_stop_the_server_naming_the_key(
    tmp_path: Path, table: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load(tmp_path, **table)


def test_the_grant_right_is_off_unless_named(tmp_path: Path) -> None:
    grants = {"a": {"profiles": []}, "b": {"profiles": [], "service_account_signing": True}}
    config = parse_config(minimal_config(tmp_path, grants=grants), tmp_path / "kubeca.toml")
    assert not config.grants["a"].service_account_signing
    assert config.grants["b"].service_account_signing
