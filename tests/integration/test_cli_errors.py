"""The `kubeca` CLI, run as a subprocess: errors are one line, files appear only on success.

Every failure must print exactly one `kubeca: error: ...` line naming the problem on
stderr, no traceback, exit non-zero, and leave no key or certificate behind; a private
key is never overwritten.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.support import BIN, RunningServer

pytestmark = pytest.mark.integration

KUBECA = str(BIN / "kubeca")
CONFIG_ENV = "KUBECA_CLIENT_CONFIG"


def _write_client_config(
    directory: Path, server: RunningServer, address: str | None = None, timeout_seconds: float = 10
) -> Path:
    return server.client_config(directory / "client.toml", timeout_seconds, address)


def _kubeca(
    *args: str, config: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != CONFIG_ENV}
    argv = [KUBECA, *(["--config", str(config)] if config else []), *args]
    return subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr
    assert 'File "' not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kubeca: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert result.stdout == ""


@pytest.fixture
def config(server: RunningServer, tmp_path: Path) -> Path:
    return _write_client_config(tmp_path, server)


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """An empty directory for the files a command may write; it must stay empty on error."""
    directory = tmp_path / "out"
    directory.mkdir()
    return directory


def _issue(out: Path, *extra: str, profile: str = "admin") -> list[str]:
    return [
        "issue",
        "--profile",
        profile,
        "--key-out",
        str(out / "tls.key"),
        "--cert-out",
        str(out / "tls.crt"),
        "--ca-out",
        str(out / "ca.crt"),
        *extra,
    ]


def test_unknown_profile_is_one_line_and_writes_nothing(config: Path, out: Path) -> None:
    result = _kubeca(*_issue(out, profile="kube-god"), config=config)
    _assert_one_line_error(result, "no profile named 'kube-god'", "known profiles", "admin")
    assert result.returncode == 3
    assert list(out.iterdir()) == []


def test_super_admin_is_refused_and_writes_nothing(config: Path, out: Path) -> None:
    result = _kubeca(*_issue(out, profile="super-admin"), config=config)
    _assert_one_line_error(result, "system:masters", "enable_super_admin")
    assert result.returncode == 4
    assert list(out.iterdir()) == []


def test_bad_parameter_value_is_one_line_and_writes_nothing(config: Path, out: Path) -> None:
    result = _kubeca(
        *_issue(out, "--param", "node_name=Node_1", profile="kubelet-client"), config=config
    )
    _assert_one_line_error(result, "node_name", "'Node_1'", "DNS-1123")
    assert result.returncode == 2
    assert list(out.iterdir()) == []


def test_param_without_equals_is_one_line(config: Path, out: Path) -> None:
    result = _kubeca(*_issue(out, "--param", "node_name", profile="kubelet-client"), config=config)
    _assert_one_line_error(result, "--param 'node_name'", "NAME=VALUE")
    assert result.returncode == 2
    assert list(out.iterdir()) == []


def test_param_given_twice_is_one_line(config: Path, out: Path) -> None:
    twice = ("--param", "node_name=a", "--param", "node_name=b")
    result = _kubeca(*_issue(out, *twice, profile="kubelet-client"), config=config)
    _assert_one_line_error(result, "--param node_name", "twice")
    assert result.returncode == 2
    assert list(out.iterdir()) == []


def test_key_out_in_a_missing_directory_is_one_line(config: Path, out: Path) -> None:
    missing = out / "no" / "such" / "dir"
    args = ["issue", "--profile", "admin", "--key-out", str(missing / "tls.key")]
    result = _kubeca(*args, "--cert-out", str(out / "tls.crt"), config=config)
    _assert_one_line_error(result, "--key-out", str(missing), "does not exist")
    assert result.returncode == 2
    assert list(out.iterdir()) == []


def test_key_out_never_overwrites_an_existing_key(config: Path, out: Path) -> None:
    key = out / "tls.key"
    key.write_text("the only copy of an existing private key\n")
    key.chmod(0o600)
    result = _kubeca(*_issue(out), config=config)
    _assert_one_line_error(result, "--key-out", str(key), "exists", "never overwrites")
    assert result.returncode == 2
    assert key.read_text() == "the only copy of an existing private key\n"
    assert sorted(p.name for p in out.iterdir()) == ["tls.key"]


def test_bad_key_algorithm_is_one_line(config: Path, out: Path) -> None:
    result = _kubeca(*_issue(out, "--key-algorithm", "DSA-1024"), config=config)
    _assert_one_line_error(result, "--key-algorithm", "'DSA-1024'", "ECDSA-P256")
    assert result.returncode == 2
    assert list(out.iterdir()) == []


def test_bad_lifetime_is_one_line(config: Path, out: Path) -> None:
    result = _kubeca(*_issue(out, "--lifetime", "10x"), config=config)
    _assert_one_line_error(result, "'10x'", "is not a duration")
    assert result.returncode == 2
    assert list(out.iterdir()) == []


def test_lifetime_below_the_minimum_is_refused_by_the_server(config: Path, out: Path) -> None:
    result = _kubeca(*_issue(out, "--lifetime", "1m"), config=config)
    _assert_one_line_error(result, "lifetime", "below the minimum")
    assert result.returncode == 2
    assert list(out.iterdir()) == []


def test_missing_config_is_one_line(out: Path) -> None:
    result = _kubeca(*_issue(out))
    _assert_one_line_error(result, "no client config", "--config", CONFIG_ENV)
    assert result.returncode == 78
    assert list(out.iterdir()) == []


def test_unreadable_config_file_is_one_line(tmp_path: Path, out: Path) -> None:
    result = _kubeca(*_issue(out), config=tmp_path / "missing.toml")
    _assert_one_line_error(result, "cannot read client config", "missing.toml")
    assert result.returncode == 78
    assert list(out.iterdir()) == []


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens here once the socket is closed


def test_unreachable_server_fails_fast_with_exit_69(
    server: RunningServer, tmp_path: Path, out: Path
) -> None:
    config = _write_client_config(
        tmp_path, server, f"127.0.0.1:{_closed_port()}", timeout_seconds=2
    )
    started = time.monotonic()
    result = _kubeca(*_issue(out), config=config, timeout=30)
    elapsed = time.monotonic() - started
    assert elapsed < 15, f"took {elapsed:.1f}s"
    _assert_one_line_error(result, "unavailable")
    assert result.returncode == 69
    assert list(out.iterdir()) == []


def test_unreachable_server_for_ca_fails_fast_with_exit_69(
    server: RunningServer, tmp_path: Path
) -> None:
    config = _write_client_config(
        tmp_path, server, f"127.0.0.1:{_closed_port()}", timeout_seconds=2
    )
    started = time.monotonic()
    result = _kubeca("ca", config=config, timeout=30)
    assert time.monotonic() - started < 15
    _assert_one_line_error(result, "unavailable")
    assert result.returncode == 69


def test_issue_admin_writes_a_private_key_and_a_verifiable_certificate(
    config: Path, out: Path
) -> None:
    result = _kubeca(*_issue(out), config=config)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "issued admin by kubernetes-ca" in result.stdout
    key, cert, ca = out / "tls.key", out / "tls.crt", out / "ca.crt"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_text().startswith("-----BEGIN EC PRIVATE KEY-----")
    assert sorted(p.name for p in out.iterdir()) == ["ca.crt", "tls.crt", "tls.key"]
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca), str(cert)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert f"{cert}: OK" in verify.stdout
    # The certificate is for the key that was written next to it.
    key_pub = subprocess.run(
        ["openssl", "pkey", "-in", str(key), "-pubout"], capture_output=True, check=True
    ).stdout
    cert_pub = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-pubkey"], capture_output=True, check=True
    ).stdout
    assert key_pub == cert_pub
