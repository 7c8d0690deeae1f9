"""Rotation reaches every running worker without a restart; the service CA rotates too.

A server runs with two worker processes sharing the port. After `ca rotate switch`,
taken by a separate `kubeca-server` process, each worker reloads the generations from
the store within its reload interval: every certificate then comes from the new
generation, over fresh connections (spread across the workers by SO_REUSEPORT).

The service CA (which signs the server's own TLS certificate and the operators' client
certificates) is rotated the same way; its listeners read their files at start, so the
server is restarted after switch (on the re-issued server certificate) and after
finish, when the old operator credentials stop working.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from kubeca_client.client import Client, channel_credentials
from kubeca_client.errors import KubecaError
from kubeca_client.keys import KeyAlgorithm, build_csr, generate_private_key

from tests.support import RunningServer, make_token, run_server_cli, write_server_config

pytestmark = pytest.mark.integration

RELOAD_DEADLINE = 20.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    base = tmp_path_factory.mktemp("rotate-workers")
    token = make_token(base / "hsm")
    config = write_server_config(base / "server", token)
    run_server_cli(config, token, "init")
    running = RunningServer(config, token, workers=2).start()
    yield running
    running.stop()


def _rotate(server: RunningServer, step: str, authority: str, *extra: str) -> str:
    result = run_server_cli(
        server.config,
        server.token,
        "ca",
        "rotate",
        step,
        "--authority",
        authority,
        *extra,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _issuer_key_id(server: RunningServer) -> bytes | None:
    """One certificate over a connection of its own: whichever worker takes it."""
    key = generate_private_key(KeyAlgorithm.ECDSA_P256)
    with server.client() as client:
        issued = client.issue_certificate("apiserver-etcd-client", build_csr(key), force_new=True)
    aki = issued.certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    return aki.value.key_identifier


def test_a_step_out_of_order_is_refused_and_audited(server: RunningServer) -> None:
    result = run_server_cli(
        server.config,
        server.token,
        "ca",
        "rotate",
        "switch",
        "--authority",
        "front-proxy-ca",
        check=False,
    )
    assert result.returncode == 78, result.stdout + result.stderr  # FAILED_PRECONDITION
    assert "no new generation to switch to" in result.stderr
    assert "Traceback" not in result.stderr
    records = [json.loads(line) for line in server.audit_log.read_text().splitlines()]
    refused = [r for r in records if r["event"] == "ca.rotation.refused"]
    assert refused and refused[-1]["authority"] == "front-proxy-ca"
    assert refused[-1]["status"] == "FAILED_PRECONDITION"


def _cross_chain_verifies_against_the_old_root(
    server: RunningServer, old_root: str, tmp_path: Path
) -> None:
    """OpenSSL, trusting only the old CA, accepts leaf -> cross-certificate -> old root."""
    key = generate_private_key(KeyAlgorithm.ECDSA_P256)
    with server.client() as client:
        leaf = client.issue_certificate("apiserver-etcd-client", build_csr(key), force_new=True)
        (etcd,) = client.ca_certificates("etcd-ca")
    assert etcd.cross_certificate_pem and leaf.ca_certificate_pem != old_root
    files = {"old.pem": old_root, "cross.pem": etcd.cross_certificate_pem}
    files["leaf.pem"] = leaf.certificate_pem
    for name, pem in files.items():
        (tmp_path / name).write_text(pem)
    alone = subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp_path / "old.pem"), str(tmp_path / "leaf.pem")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert alone.returncode != 0  # the new CA is not trusted by itself
    chained = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(tmp_path / "old.pem"),
            "-untrusted",
            str(tmp_path / "cross.pem"),
            str(tmp_path / "leaf.pem"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert chained.returncode == 0, chained.stdout + chained.stderr


def test_every_worker_issues_from_the_new_generation_after_switch(
    server: RunningServer, tmp_path: Path
) -> None:
    with server.client() as client:
        old_root = client.ca_certificates("etcd-ca")[0].certificate_pem
    old = _issuer_key_id(server)
    _rotate(server, "begin", "etcd-ca")
    assert all(_issuer_key_id(server) == old for _ in range(4))  # begin switches nothing
    _rotate(server, "switch", "etcd-ca")
    deadline = time.monotonic() + RELOAD_DEADLINE
    streak: list[bytes | None] = []
    while len(streak) < 10:
        assert time.monotonic() < deadline, "a worker kept issuing from the old generation"
        seen = _issuer_key_id(server)
        streak = [*streak, seen] if seen != old else []
    assert len(set(streak)) == 1  # one new generation, whichever worker answered
    _cross_chain_verifies_against_the_old_root(server, old_root, tmp_path)
    _rotate(server, "finish", "etcd-ca", "--force")


def test_the_service_ca_rotates_with_a_restart_after_switch_and_finish(
    server: RunningServer, tmp_path: Path
) -> None:
    old_credentials = tmp_path / "old-operator"
    shutil.copytree(server.credentials_dir, old_credentials)
    _rotate(server, "begin", "kubeca-service-ca")
    assert server.service_ca.read_text().count("BEGIN CERTIFICATE") == 2
    out = _rotate(server, "switch", "kubeca-service-ca")
    assert "server TLS certificate: issued" in out and "restart the servers" in out
    server.stop()
    server.start()  # on the re-issued TLS certificate; old operator credentials still work
    with server.client() as client:
        assert client.ca_certificates("etcd-ca")
    # New operator credentials from the new generation, then the old one is retired.
    shutil.rmtree(server.credentials_dir)
    server.ensure_credentials()
    assert "retired" in _rotate(server, "finish", "kubeca-service-ca")
    assert server.service_ca.read_text().count("BEGIN CERTIFICATE") == 1
    server.stop()
    server.start()
    with server.client() as client:
        assert client.ca_certificates("etcd-ca")
    stale = channel_credentials(
        server.service_ca.read_bytes(),
        (old_credentials / "client.crt").read_bytes(),
        (old_credentials / "client.key").read_bytes(),
    )
    with (
        pytest.raises((KubecaError, grpc.RpcError)),
        Client(server.address, 10, credentials=stale) as client,
    ):
        client.ca_certificates("etcd-ca")
