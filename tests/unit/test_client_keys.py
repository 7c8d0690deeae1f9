"""kubeca_client.keys and .config: leaf keys, CSRs, and the client's TOML."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from kubeca_client.config import DEFAULT_TIMEOUT_SECONDS, load_client_config
from kubeca_client.errors import ConfigError
from kubeca_client.keys import (
    KeyAlgorithm,
    PrivateKey,
    build_csr,
    generate_private_key,
    private_key_pem,
)

from tests.unit.helpers import p256_key, rsa_key, subject


@pytest.mark.parametrize("text", ["ECDSA-P256", "ecdsa-p384", " rsa-2048 ", "RSA-4096"])
def test_key_algorithm_parse_is_lenient_about_case_and_space(text: str) -> None:
    assert KeyAlgorithm.parse(text).value == text.strip().upper()


def test_key_algorithm_parse_lists_the_valid_names() -> None:
    with pytest.raises(ValueError, match="ECDSA-P256, ECDSA-P384, RSA-2048, RSA-3072, RSA-4096"):
        KeyAlgorithm.parse("ed25519")


def test_key_algorithm_properties() -> None:
    assert KeyAlgorithm.RSA_3072.rsa_bits == 3072
    assert isinstance(KeyAlgorithm.ECDSA_P384.curve, ec.SECP384R1)
    assert not KeyAlgorithm.ECDSA_P256.is_rsa
    with pytest.raises(ValueError, match="not an RSA"):
        _ = KeyAlgorithm.ECDSA_P256.rsa_bits
    with pytest.raises(ValueError, match="not an ECDSA"):
        _ = KeyAlgorithm.RSA_2048.curve


@pytest.mark.parametrize(
    ("algorithm", "curve"),
    [(KeyAlgorithm.ECDSA_P256, "secp256r1"), (KeyAlgorithm.ECDSA_P384, "secp384r1")],
)
def test_generate_ecdsa_keys(algorithm: KeyAlgorithm, curve: str) -> None:
    key = generate_private_key(algorithm)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == curve


def test_generate_rsa_key() -> None:
    key = generate_private_key(KeyAlgorithm.RSA_2048)
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.key_size == 2048
    assert key.public_key().public_numbers().e == 65537


def test_build_csr_has_an_empty_subject_by_default_and_verifies() -> None:
    csr = x509.load_pem_x509_csr(build_csr(p256_key()))
    assert len(csr.subject) == 0
    assert csr.is_signature_valid
    assert csr.public_key() == p256_key().public_key()
    assert len(csr.extensions) == 0


def test_build_csr_with_a_subject() -> None:
    csr = x509.load_pem_x509_csr(build_csr(p256_key(), subject("kubernetes-admin", "o")))
    assert csr.subject == subject("kubernetes-admin", "o")


@pytest.mark.parametrize(
    ("key_factory", "header"),
    [(p256_key, b"-----BEGIN EC PRIVATE KEY-----"), (rsa_key, b"-----BEGIN RSA PRIVATE KEY-----")],
)
def test_private_key_pem_is_traditional_and_unencrypted(
    key_factory: Callable[[], PrivateKey], header: bytes
) -> None:
    key = key_factory()
    pem = private_key_pem(key)
    assert pem.startswith(header)
    assert load_pem_private_key(pem, None).public_key() == key.public_key()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "client.toml"
    path.write_text(text)
    return path


def test_client_config_defaults(tmp_path: Path) -> None:
    config = load_client_config(
        write(tmp_path, 'address = "ca.example:7443"\nca_file = "ca.crt"\n')
    )
    assert config.address == "ca.example:7443"
    assert config.timeout_seconds == DEFAULT_TIMEOUT_SECONDS


def test_client_config_names_replicas_in_the_order_to_try_them(tmp_path: Path) -> None:
    path = write(tmp_path, 'address = ["a.example:7443", "b.example:7443"]\nca_file = "ca.crt"\n')
    config = load_client_config(path)
    assert config.addresses == ("a.example:7443", "b.example:7443")
    assert config.address == "a.example:7443"


def test_client_config_timeout(tmp_path: Path) -> None:
    path = write(tmp_path, 'address = "h:1"\ntimeout_seconds = 2\nca_file = "ca.crt"\n')
    assert load_client_config(path).timeout_seconds == 2.0


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('address = "h:1"\nadress = "x"\n', "unknown key 'adress'"),
        ('address = "h"\n', "address must be HOST:PORT"),
        ("timeout_seconds = 3\n", "address must be HOST:PORT"),
        ('address = "h:1"\ntimeout_seconds = 0\n', "timeout_seconds"),
        ('address = "h:1"\ntimeout_seconds = true\n', "timeout_seconds"),
        ('address = "h:1"\ntimeout_seconds = 601\n', "timeout_seconds"),
        ("address = \n", "not valid TOML"),
        ('address = []\nca_file = "c"\n', "address must be HOST:PORT or a list"),
        ('address = ["h:1", "h"]\nca_file = "c"\n', "address must be HOST:PORT or a list"),
        ('address = ["h:1", "h:1"]\nca_file = "c"\n', "names one address twice"),
    ],
)
def test_client_config_errors_name_the_key(tmp_path: Path, text: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        load_client_config(write(tmp_path, text))


def test_client_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read client config"):
        load_client_config(tmp_path / "absent.toml")
