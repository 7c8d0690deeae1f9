"""kubeca terraform's ``server``: one address or replicas, parsed into the client config."""

from __future__ import annotations

import pytest
from kubeca_client.errors import InvalidArgument
from kubeca_client.terraform import _config

QUERY = {"ca_cert_hash": "sha256:" + "ab" * 32, "cert_file": "c.crt", "key_file": "c.key"}


def test_replicas_are_named_with_commas_in_the_order_to_try_them() -> None:
    config = _config({**QUERY, "server": "a.example:7443, b.example:7443"}, 10)
    assert config.addresses == ("a.example:7443", "b.example:7443")


def test_one_server_is_one_address() -> None:
    assert _config({**QUERY, "server": "a.example:7443"}, 10).addresses == ("a.example:7443",)


@pytest.mark.parametrize("server", ["a:1,b", "a:1,a:1", "a:1,,b:2"])
def test_a_wrong_list_of_replicas_is_invalid_argument(server: str) -> None:
    with pytest.raises(InvalidArgument):
        _config({**QUERY, "server": server}, 10)
