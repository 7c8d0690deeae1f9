"""kubeca_client.files.atomic_write: whole files, private when asked, no leftovers."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from kubeca_client.files import PRIVATE, PUBLIC, atomic_write


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_writes_the_data(tmp_path: Path) -> None:
    target = tmp_path / "ca.crt"
    atomic_write(target, b"hello")
    assert target.read_bytes() == b"hello"
    assert leftovers(tmp_path) == []


def test_private_file_is_0600(tmp_path: Path) -> None:
    target = tmp_path / "apiserver.key"
    atomic_write(target, b"secret", PRIVATE)
    assert mode(target) == 0o600


def test_public_file_is_0644_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        atomic_write(tmp_path / "ca.crt", b"x", PUBLIC)
    finally:
        os.umask(old)
    assert mode(tmp_path / "ca.crt") == 0o644


def test_replaces_an_existing_file_and_its_mode(tmp_path: Path) -> None:
    target = tmp_path / "admin.conf"
    target.write_bytes(b"old contents, longer than the new")
    target.chmod(0o644)
    atomic_write(target, b"new", PRIVATE)
    assert target.read_bytes() == b"new"
    assert mode(target) == 0o600


def test_failed_rename_leaves_no_temp_file_and_the_old_target(tmp_path: Path) -> None:
    target = tmp_path / "pki"
    target.mkdir()
    (target / "inside").write_bytes(b"keep")
    with pytest.raises(OSError):
        atomic_write(target, b"data", PRIVATE)
    assert leftovers(tmp_path) == []
    assert (target / "inside").read_bytes() == b"keep"


def test_failed_write_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "ca.key"
    target.write_bytes(b"previous")
    with pytest.raises(TypeError):
        atomic_write(target, "not bytes", PRIVATE)  # type: ignore[arg-type]
    assert leftovers(tmp_path) == []
    assert target.read_bytes() == b"previous"


def test_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "absent" / "ca.crt", b"x")
