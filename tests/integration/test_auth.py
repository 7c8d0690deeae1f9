"""Who may ask for what, proven over real TLS on loopback.

One server of this module's own, with grants of several shapes:

- ``limited``: a few profiles, ``node-*`` names, two DNS rules, one CIDR, 30 days, no tokens
- ``wildcard``: every profile by ``*`` (which never reaches system:masters)
- ``masters``: super-admin, named
- ``tokens``: kubelet profiles for ``worker-*`` in 10.0.0.0/8, and bootstrap tokens
- ``nobody-granted``: a valid operator certificate, and no grant at all

The operator port needs a client certificate from the service CA; the bootstrap port
needs none and serves the anonymous reads and the bootstrap-token callers.

Each grant and token rule has one case here, end to end; its other cases are unit tests
(tests/unit/test_grants.py, test_tokens.py, test_token_admin.py, test_permits.py).
What only the deployment can show stays here: TLS, the two ports, two worker processes
racing for one token use, what reaches the files on disk, the CLI, and the audit log.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kubeca_client._proto.kubeca.v1 import kubeca_pb2 as pb
from kubeca_client._proto.kubeca.v1 import kubeca_pb2_grpc as pb_grpc
from kubeca_client.client import Client, IssuedCertificate, channel_credentials, error_from_rpc
from kubeca_client.errors import KubecaError, PermissionDenied, Unauthenticated
from kubeca_client.keys import KeyAlgorithm, build_csr, generate_private_key, private_key_pem

from tests.support import (
    BIN,
    OPERATOR,
    RunningServer,
    make_token,
    run_server_cli,
    write_server_config,
)

pytestmark = pytest.mark.integration

TIMEOUT = 15.0
IDENTITIES = ("limited", "wildcard", "masters", "tokens", "nobody-granted")
EXTRA_GRANTS = """
[grants.limited]
profiles = ["etcd-server", "kubelet-serving", "admin"]
node_names = ["node-*"]
san_dns = ["db.example.com", ".internal.example.com"]
san_cidrs = ["10.1.0.0/16"]
max_lifetime_days = 30
bootstrap_tokens = false

[grants.wildcard]
profiles = ["*"]
node_names = ["*"]
san_dns = ["*"]
san_cidrs = ["0.0.0.0/0"]

[grants.masters]
profiles = ["super-admin"]

[grants.tokens]
profiles = ["kubelet-client", "kubelet-serving"]
node_names = ["worker-*"]
san_cidrs = ["10.0.0.0/8"]
bootstrap_tokens = true
"""
TOKEN_SHAPE = re.compile(r"[a-z0-9]{6}\.[a-z0-9]{16}")
INVALID_TOKEN = "invalid bootstrap token"  # an answer, not a secret
DAY = 86400
# The server's default lifetime (365 days) is beyond the limited grant's 30.
LIMITED_LIFETIME = 30 * DAY


# --- the deployment --------------------------------------------------------------------


@dataclass(frozen=True)
class Deployment:
    server: RunningServer
    credentials: dict[str, Path]  # identity -> directory with client.crt, client.key

    @property
    def service_ca_pem(self) -> bytes:
        return self.server.service_ca.read_bytes()

    def as_identity(self, identity: str) -> Client:
        """An operator client on the operator port, with ``identity``'s certificate."""
        directory = self.credentials[identity]
        return Client(
            self.server.address,
            TIMEOUT,
            credentials=channel_credentials(
                self.service_ca_pem,
                (directory / "client.crt").read_bytes(),
                (directory / "client.key").read_bytes(),
            ),
        )

    def node(self, token: str | None = None, own_connection: bool = False) -> Client:
        """A node on the bootstrap port: TLS trusting the service CA, maybe a token."""
        options = (("grpc.use_local_subchannel_pool", 1),) if own_connection else ()
        return Client(
            self.server.bootstrap_address,
            TIMEOUT,
            options,
            credentials=channel_credentials(self.service_ca_pem),
            token=token,
        )

    def audit(self) -> list[dict[str, Any]]:
        lines = self.server.audit_log.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def refusals_by(self, caller: str) -> list[dict[str, Any]]:
        return [r for r in self.audit() if r.get("caller") == caller and r["outcome"] == "refused"]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    token = make_token(tmp_path_factory.mktemp("auth-softhsm"), label="kubeca-auth")
    base = tmp_path_factory.mktemp("auth-server")
    config = write_server_config(base, token, extra="[profiles]\nenable_super_admin = true\n")
    with config.open("a") as f:
        f.write(EXTRA_GRANTS)
    run_server_cli(config, token, "init")
    credentials = {}
    for identity in IDENTITIES:
        out = base / "identities" / identity
        run_server_cli(config, token, "credentials", "issue", "--name", identity, "--out", str(out))
        credentials[identity] = out
    # Two workers sharing each port: a token's one use must hold across processes too.
    server = RunningServer(config, token, workers=2).start()
    try:
        yield Deployment(server, credentials)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def operator(deployment: Deployment) -> Iterator[Client]:
    with deployment.server.client(timeout=TIMEOUT) as client:
        yield client


# --- helpers ---------------------------------------------------------------------------


def _issue(
    client: Client,
    profile: str,
    parameters: dict[str, str] | None = None,
    lifetime_seconds: int = 0,
) -> IssuedCertificate:
    key = generate_private_key(KeyAlgorithm.ECDSA_P256)
    return client.issue_certificate(profile, build_csr(key), parameters or {}, lifetime_seconds)


def _refused(
    client: Client,
    profile: str,
    parameters: dict[str, str] | None = None,
    lifetime_seconds: int = 0,
    error: type[KubecaError] = PermissionDenied,
) -> str:
    with pytest.raises(error) as caught:
        _issue(client, profile, parameters, lifetime_seconds)
    assert type(caught.value) is error, caught.value
    return caught.value.message


def _raw_tls_failure(address: str, credentials: grpc.ChannelCredentials) -> grpc.RpcError:
    """What raw gRPC reports for a call the TLS layer refused."""
    with grpc.secure_channel(address, credentials) as channel:
        stub = pb_grpc.CertificateAuthorityStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetCACertificates(pb.GetCACertificatesRequest(), timeout=TIMEOUT)
    error = caught.value
    assert isinstance(error, grpc.RpcError)
    return error


def _assert_refused_by_tls(deployment: Deployment, credentials: grpc.ChannelCredentials) -> None:
    address = deployment.server.address
    raw = _raw_tls_failure(address, credentials)
    assert raw.code() == grpc.StatusCode.UNAVAILABLE, (raw.code(), raw.details())
    assert "socket closed" in (raw.details() or "").lower(), raw.details()
    assert isinstance(error_from_rpc(raw, address), Unauthenticated)
    with (
        Client(address, TIMEOUT, credentials=credentials) as client,
        pytest.raises(Unauthenticated, match="client certificate from the service CA"),
    ):
        client.ca_certificates()


def _foreign_client_credentials(
    deployment: Deployment, common_name: str
) -> grpc.ChannelCredentials:
    """A client certificate with clientAuth, from a CA the service has never seen."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubeca-service-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return channel_credentials(
        deployment.service_ca_pem,
        leaf.public_bytes(Encoding.PEM) + ca.public_bytes(Encoding.PEM),
        private_key_pem(leaf_key),
    )


def _service_ca_hash(deployment: Deployment) -> str:
    ca = x509.load_pem_x509_certificate(deployment.service_ca_pem)
    spki = ca.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def _new_token(
    deployment: Deployment,
    profiles: tuple[str, ...] = ("kubelet-client", "kubelet-serving"),
    node_name: str = "worker-1",
    addresses: tuple[str, ...] = ("10.0.0.21",),
    ttl_seconds: int = 600,
) -> str:
    with deployment.as_identity("tokens") as client:
        created = client.create_bootstrap_token(profiles, node_name, addresses, ttl_seconds)
    return created.token


def _kubeca(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("KUBECA_")}
    return subprocess.run(
        [str(BIN / "kubeca"), *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _tokens_client_config(deployment: Deployment, path: Path) -> Path:
    directory = deployment.credentials["tokens"]
    path.write_text(
        f'address = "{deployment.server.address}"\n'
        f"timeout_seconds = {TIMEOUT}\n"
        f'ca_file = "{deployment.server.service_ca}"\n'
        f'cert_file = "{directory / "client.crt"}"\n'
        f'key_file = "{directory / "client.key"}"\n'
    )
    return path


def _files_under(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file())


# --- 1. the operator port: only the service CA's client certificates -------------------


def test_operator_port_refuses_a_caller_without_a_client_certificate(
    deployment: Deployment,
) -> None:
    _assert_refused_by_tls(deployment, channel_credentials(deployment.service_ca_pem))


def test_operator_port_refuses_a_client_certificate_from_another_ca(
    deployment: Deployment,
) -> None:
    # Even one naming a granted identity, from a CA that borrows the service CA's name.
    _assert_refused_by_tls(deployment, _foreign_client_credentials(deployment, OPERATOR))


def test_operator_port_refuses_a_cluster_ca_certificate_as_a_caller(
    deployment: Deployment, operator: Client
) -> None:
    key = generate_private_key(KeyAlgorithm.ECDSA_P256)
    admin = operator.issue_certificate("admin", build_csr(key))
    assert admin.authority == "kubernetes-ca"
    assert (
        ExtendedKeyUsageOID.CLIENT_AUTH
        in admin.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    )
    credentials = channel_credentials(
        deployment.service_ca_pem,
        (admin.certificate_pem + admin.ca_certificate_pem).encode(),
        private_key_pem(key),
    )
    _assert_refused_by_tls(deployment, credentials)


def test_service_ca_certificate_not_made_for_clients_is_no_caller(
    deployment: Deployment,
) -> None:
    # The server's own certificate chains to the service CA but is serverAuth only.
    tls = deployment.server.state_dir / "tls"
    credentials = channel_credentials(
        deployment.service_ca_pem,
        (tls / "server.crt").read_bytes(),
        (tls / "server.key").read_bytes(),
    )
    with (
        Client(deployment.server.address, TIMEOUT, credentials=credentials) as client,
        pytest.raises(Unauthenticated),
    ):
        client.profiles()


# --- 2. the bootstrap port: public reads only, without a token ------------------------


def test_anyone_reads_ca_certificates_on_the_bootstrap_port(
    deployment: Deployment, operator: Client
) -> None:
    with deployment.node() as node:
        anonymous = {ca.authority: ca.certificate_pem for ca in node.ca_certificates()}
    assert anonymous == {ca.authority: ca.certificate_pem for ca in operator.ca_certificates()}
    assert {"kubernetes-ca", "etcd-ca", "front-proxy-ca"} <= set(anonymous)


def test_anyone_checks_health_on_the_bootstrap_port(deployment: Deployment) -> None:
    credentials = channel_credentials(deployment.service_ca_pem)
    with grpc.secure_channel(deployment.server.bootstrap_address, credentials) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_bootstrap_port_without_token_may_not_list_profiles(deployment: Deployment) -> None:
    with deployment.node() as node, pytest.raises(Unauthenticated, match="bootstrap token"):
        node.profiles()


def test_bootstrap_port_without_token_may_not_issue(deployment: Deployment) -> None:
    with deployment.node() as node:
        message = _refused(node, "kubelet-client", {"node_name": "worker-1"}, error=Unauthenticated)
    assert "client certificate" in message and "bootstrap token" in message


def test_raw_status_without_token_is_unauthenticated(deployment: Deployment) -> None:
    credentials = channel_credentials(deployment.service_ca_pem)
    with grpc.secure_channel(deployment.server.bootstrap_address, credentials) as channel:
        stub = pb_grpc.CertificateAuthorityStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ListProfiles(pb.ListProfilesRequest(), timeout=TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


# --- 3. grants ---------------------------------------------------------------------------


def test_identity_without_grant_is_denied(deployment: Deployment) -> None:
    with deployment.as_identity("nobody-granted") as client:
        message = _refused(client, "admin")
    assert "'nobody-granted' has no grant" in message


def test_limited_may_not_have_another_profile(deployment: Deployment) -> None:
    parameters = {"node_name": "node-1", "advertise_address": "10.1.0.5"}
    with deployment.as_identity("limited") as client:
        message = _refused(client, "apiserver", parameters, LIMITED_LIFETIME)
    assert "grant 'limited' does not allow profile apiserver" in message


def test_limited_may_not_name_another_node(deployment: Deployment) -> None:
    with deployment.as_identity("limited") as client:
        message = _refused(client, "kubelet-serving", {"node_name": "db-1"}, LIMITED_LIFETIME)
    assert "does not allow node name 'db-1'" in message and "node-*" in message


def test_limited_may_not_add_a_dns_name_outside_its_rules(deployment: Deployment) -> None:
    parameters = {"node_name": "node-1", "extra_sans": "evil.example.com"}
    with deployment.as_identity("limited") as client:
        message = _refused(client, "kubelet-serving", parameters, LIMITED_LIFETIME)
    assert "does not allow DNS SAN 'evil.example.com'" in message


def test_limited_may_not_certify_an_address_outside_its_cidr(deployment: Deployment) -> None:
    parameters = {"node_name": "node-1", "advertise_address": "10.2.0.1"}
    with deployment.as_identity("limited") as client:
        message = _refused(client, "etcd-server", parameters, LIMITED_LIFETIME)
    assert "does not allow IP SAN 10.2.0.1" in message and "10.1.0.0/16" in message


def test_limited_may_not_exceed_its_lifetime(deployment: Deployment) -> None:
    with deployment.as_identity("limited") as client:
        message = _refused(client, "admin", lifetime_seconds=31 * DAY)
        issued = _issue(client, "admin", lifetime_seconds=LIMITED_LIFETIME)
    assert "allows lifetimes up to 30 days" in message
    lifetime = issued.not_after - issued.not_before
    assert timedelta(days=30) <= lifetime <= timedelta(days=30, minutes=10)


def test_wildcard_never_covers_super_admin(deployment: Deployment) -> None:
    with deployment.as_identity("wildcard") as client:
        message = _refused(client, "super-admin")
    assert "does not allow profile super-admin" in message
    assert "'*' does not cover them" in message


def test_named_super_admin_is_issued_and_audited_as_critical(deployment: Deployment) -> None:
    with deployment.as_identity("masters") as client:
        issued = _issue(client, "super-admin")
    subject = issued.certificate.subject
    assert subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    records = [r for r in deployment.audit() if r.get("serial") == issued.serial]
    assert len(records) == 1
    record = records[0]
    assert record["event"] == "certificate.issued"
    assert record["caller"] == "masters"
    assert record["level"] == "critical"
    assert record["system_masters"] is True


# --- 4. bootstrap tokens -----------------------------------------------------------------


def test_token_is_created_in_kubeadm_shape_with_the_service_ca_hash(
    deployment: Deployment,
) -> None:
    with deployment.as_identity("tokens") as client:
        created = client.create_bootstrap_token(
            ["kubelet-client", "kubelet-serving"], "worker-1", ["10.0.0.21"], 600
        )
    assert TOKEN_SHAPE.fullmatch(created.token), created.token
    assert created.token_id == created.token.split(".")[0]
    assert created.ca_cert_hash == _service_ca_hash(deployment)
    assert timedelta(seconds=590) < created.expires - datetime.now(UTC) <= timedelta(seconds=600)


def test_identity_without_token_grant_may_not_create_tokens(deployment: Deployment) -> None:
    with deployment.as_identity("limited") as client, pytest.raises(PermissionDenied) as caught:
        client.create_bootstrap_token(["kubelet-serving"], "node-1", ["10.1.0.1"], 600)
    assert "may not manage bootstrap tokens" in caught.value.message


def test_token_may_not_carry_more_than_its_creators_grant(deployment: Deployment) -> None:
    # Its node name and addresses neither: tests/unit/test_token_admin.py.
    with deployment.as_identity("tokens") as client, pytest.raises(PermissionDenied) as caught:
        client.create_bootstrap_token(["etcd-server"], "worker-1", [], 600)
    assert "does not allow profile etcd-server" in caught.value.message


def test_token_obtains_each_profile_once(deployment: Deployment) -> None:
    token = _new_token(deployment)
    with deployment.node(token) as node:
        issued = _issue(node, "kubelet-client", {"node_name": "worker-1"})
        again = _refused(node, "kubelet-client", {"node_name": "worker-1"}, error=Unauthenticated)
    cn = issued.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "system:node:worker-1"
    assert again == INVALID_TOKEN


def test_used_and_unknown_tokens_get_one_answer(deployment: Deployment) -> None:
    # Revoked and expired ones too: tests/unit/test_tokens.py, on a clock of its own.
    used = _new_token(deployment)
    with deployment.node(used) as node:
        _issue(node, "kubelet-client", {"node_name": "worker-1"})
        used_answer = _refused(
            node, "kubelet-client", {"node_name": "worker-1"}, error=Unauthenticated
        )
    unknown = used.split(".")[0] + "." + "0" * 16  # a real id, a wrong secret
    with deployment.node(unknown) as node:
        unknown_answer = _refused(
            node, "kubelet-client", {"node_name": "worker-1"}, error=Unauthenticated
        )
    with deployment.node("zzzzzz.zzzzzzzzzzzzzzzz") as node:
        no_such_id = _refused(
            node, "kubelet-client", {"node_name": "worker-1"}, error=Unauthenticated
        )
    assert used_answer == unknown_answer == no_such_id == INVALID_TOKEN


def test_token_is_bound_to_its_node(deployment: Deployment) -> None:
    # And to its addresses, names and profiles: tests/unit/test_tokens.py.
    token = _new_token(deployment)
    serving = {"node_name": "worker-1", "advertise_address": "10.0.0.21"}
    with deployment.node(token) as node:
        other_node = _refused(node, "kubelet-serving", {**serving, "node_name": "worker-2"})
        # The refusal did not use the token up.
        issued = _issue(node, "kubelet-serving", serving)
        twice = _refused(node, "kubelet-serving", serving, error=Unauthenticated)
    token_id = token.split(".")[0]
    assert f"bootstrap token {token_id} is bound to node 'worker-1'" in other_node
    sans = issued.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert [str(ip) for ip in sans.value.get_values_for_type(x509.IPAddress)] == ["10.0.0.21"]
    assert twice == INVALID_TOKEN


def _race_for(deployment: Deployment, token: str, barrier: threading.Barrier) -> object:
    """Use ``token`` for kubelet-client on a connection of its own, once all are ready."""
    csr = build_csr(generate_private_key(KeyAlgorithm.ECDSA_P256))
    with deployment.node(token, own_connection=True) as node:
        node.ca_certificates()  # connected before the race starts
        barrier.wait(timeout=TIMEOUT)
        try:
            return node.issue_certificate("kubelet-client", csr, {"node_name": "worker-1"})
        except KubecaError as exc:
            return exc


def test_concurrent_uses_of_one_token_yield_one_certificate(deployment: Deployment) -> None:
    with ThreadPoolExecutor(max_workers=2) as pool:
        for _ in range(5):
            token = _new_token(deployment)
            barrier = threading.Barrier(2)
            racers = [pool.submit(_race_for, deployment, token, barrier) for _ in range(2)]
            outcomes = [racer.result(timeout=TIMEOUT * 2) for racer in racers]
            issued = [o for o in outcomes if isinstance(o, IssuedCertificate)]
            refused = [o for o in outcomes if isinstance(o, KubecaError)]
            assert len(issued) == 1, outcomes
            assert len(refused) == 1, outcomes
            assert isinstance(refused[0], Unauthenticated)
            assert refused[0].message == INVALID_TOKEN


def test_revoked_token_is_refused_and_listed(deployment: Deployment) -> None:
    token = _new_token(deployment)
    token_id = token.split(".")[0]
    with deployment.node(token) as node:
        _issue(node, "kubelet-client", {"node_name": "worker-1"})
    with deployment.as_identity("tokens") as client:
        client.revoke_bootstrap_token(token_id)
        listed = {t.token_id: t for t in client.bootstrap_tokens()}
    with deployment.node(token) as node:
        answer = _refused(
            node,
            "kubelet-serving",
            {"node_name": "worker-1", "advertise_address": "10.0.0.21"},
            error=Unauthenticated,
        )
    assert answer == INVALID_TOKEN
    record = listed[token_id]
    assert record.revoked is True
    assert record.used_profiles == ("kubelet-client",)
    assert record.profiles == ("kubelet-client", "kubelet-serving")
    assert record.node_name == "worker-1"
    assert record.addresses == ("10.0.0.21",)
    assert record.created_by == "tokens"


def test_only_a_hash_of_the_token_is_stored(deployment: Deployment) -> None:
    token = _new_token(deployment)
    token_id, secret = token.split(".")
    with deployment.node(token) as node:
        _issue(node, "kubelet-client", {"node_name": "worker-1"})
    database = deployment.server.state_dir / "kubeca.db"
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        row = db.execute(
            "SELECT secret_hash FROM bootstrap_tokens WHERE token_id = ?", (token_id,)
        ).fetchone()
        dump = "\n".join(db.iterdump())
    assert row == (hashlib.sha256(token.encode()).hexdigest(),)
    assert secret not in dump
    files = [database, *(database.with_name(database.name + s) for s in ("-wal", "-shm"))]
    files += [deployment.server.audit_log, deployment.server.log_path]
    for path in files:
        if path.exists():
            data = path.read_bytes()
            assert secret.encode() not in data, path
            assert token.encode() not in data, path


# --- 5. the CLI end to end ---------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_token(deployment: Deployment, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    config = _tokens_client_config(deployment, tmp_path_factory.mktemp("cli") / "client.toml")
    done = _kubeca(
        "--config",
        str(config),
        "token",
        "create",
        "--profiles",
        "kubelet-client,kubelet-serving",
        "--node-name",
        "worker-2",
        "--address",
        "10.0.0.22",
        "-o",
        "json",
    )
    assert done.returncode == 0, done.stderr
    created: dict[str, str] = json.loads(done.stdout)
    return created


def _pki_worker(
    deployment: Deployment, directory: Path, ca_cert_hash: str, *extra: str, node: str = "worker-2"
) -> list[str]:
    address = {"worker-2": "10.0.0.22", "worker-3": "10.0.0.23"}[node]
    return [
        "pki",
        "worker",
        "--node-name",
        node,
        "--address",
        address,
        "--control-plane-endpoint",
        "127.0.0.1:6443",
        "--dir",
        str(directory),
        "--server",
        deployment.server.bootstrap_address,
        "--ca-cert-hash",
        ca_cert_hash,
        *extra,
    ]


def test_cli_token_create_prints_token_and_hash(
    deployment: Deployment, cli_token: dict[str, str]
) -> None:
    assert TOKEN_SHAPE.fullmatch(cli_token["token"])
    assert cli_token["token_id"] == cli_token["token"].split(".")[0]
    assert cli_token["ca_cert_hash"] == _service_ca_hash(deployment)


def test_cli_token_create_json_carries_a_join_command_that_works(
    deployment: Deployment, tmp_path: Path
) -> None:
    config = _tokens_client_config(deployment, tmp_path / "client.toml")
    done = _kubeca(
        "--config",
        str(config),
        "token",
        "create",
        "--profiles",
        "kubelet-client,kubelet-serving",
        "--node-name",
        "worker-3",
        "--address",
        "10.0.0.23",
        "--bootstrap-server",
        deployment.server.bootstrap_address,
        "--control-plane-endpoint",
        "127.0.0.1:6443",
        "-o",
        "json",
    )
    assert done.returncode == 0, done.stderr
    created = json.loads(done.stdout)
    join = created["join_command"]
    prefix = f"KUBECA_BOOTSTRAP_TOKEN={created['token']} kubeca pki worker "
    assert join.startswith(prefix), join
    assert f"--ca-cert-hash {created['ca_cert_hash']}" in join
    # The token travels in the environment, never as an argument.
    assert created["token"] not in join.removeprefix(prefix)
    target = tmp_path / "etc-kubernetes"
    target.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBECA_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    # As a user pastes it, with the directory pointed somewhere writable (the last
    # --dir wins).
    ran = subprocess.run(
        ["bash", "-c", f"{join} --dir {target}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    serving = x509.load_pem_x509_certificate((target / "pki" / "kubelet.crt").read_bytes())
    assert serving.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "system:node:worker-3"
    )


def test_cli_token_create_json_without_the_addresses_has_no_join_command(
    cli_token: dict[str, object],
) -> None:
    assert cli_token["join_command"] is None


def test_cli_wrong_ca_hash_is_refused_and_writes_nothing(
    deployment: Deployment, cli_token: dict[str, str], tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(cli_token["token"] + "\n")
    target = tmp_path / "etc-kubernetes"
    target.mkdir()
    wrong = "sha256:" + hashlib.sha256(b"some other CA").hexdigest()
    done = _kubeca(*_pki_worker(deployment, target, wrong, "--token-file", str(token_file)))
    assert done.returncode == 4, done.stderr
    assert wrong in done.stderr
    assert cli_token["ca_cert_hash"] in done.stderr
    assert _files_under(target) == []


def test_cli_pki_worker_with_token_file_writes_the_layout(
    deployment: Deployment, cli_token: dict[str, str], tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(cli_token["token"] + "\n")
    target = tmp_path / "etc-kubernetes"
    target.mkdir()
    done = _kubeca(
        *_pki_worker(deployment, target, cli_token["ca_cert_hash"], "--token-file", str(token_file))
    )
    assert done.returncode == 0, done.stderr
    assert (target / "kubelet.conf").is_file()
    assert (target / "pki" / "kubelet.crt").is_file()
    assert (target / "pki" / "kubelet.key").is_file()
    serving = x509.load_pem_x509_certificate((target / "pki" / "kubelet.crt").read_bytes())
    cn = serving.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "system:node:worker-2"
    with deployment.as_identity("tokens") as client:
        listed = {t.token_id: t for t in client.bootstrap_tokens()}
    used = listed[cli_token["token_id"]].used_profiles
    assert set(used) == {"kubelet-client", "kubelet-serving"}


def test_cli_takes_the_token_from_the_environment(deployment: Deployment, tmp_path: Path) -> None:
    created = _new_token(deployment, node_name="worker-3", addresses=("10.0.0.23",))
    target = tmp_path / "etc-kubernetes"
    target.mkdir()
    done = _kubeca(
        *_pki_worker(deployment, target, _service_ca_hash(deployment), node="worker-3"),
        env={"KUBECA_BOOTSTRAP_TOKEN": created},
    )
    assert done.returncode == 0, done.stderr
    assert (target / "kubelet.conf").is_file()
    assert (target / "pki" / "kubelet.crt").is_file()


def test_cli_has_no_token_flag(deployment: Deployment, tmp_path: Path) -> None:
    created = _new_token(deployment, node_name="worker-3", addresses=("10.0.0.23",))
    target = tmp_path / "etc-kubernetes"
    target.mkdir()
    args = _pki_worker(deployment, target, _service_ca_hash(deployment), node="worker-3")
    done = _kubeca(*args, "--token", created)
    assert done.returncode != 0
    assert _files_under(target) == []
    # The value was not taken as a token: the token is still unused.
    with deployment.as_identity("tokens") as client:
        listed = {t.token_id: t for t in client.bootstrap_tokens()}
    assert listed[created.split(".")[0]].used_profiles == ()
    # "--token" is no flag at all, not even an abbreviation of --token-file.
    assert done.returncode == 2
    assert "unrecognized arguments: --token" in done.stderr, done.stderr


# --- 6. refusals are audited with the caller's identity ----------------------------------


def test_refusal_of_an_ungranted_identity_is_audited(deployment: Deployment) -> None:
    with deployment.as_identity("nobody-granted") as client:
        _refused(client, "kube-proxy")
    records = deployment.refusals_by("nobody-granted")
    records = [r for r in records if r.get("profile") == "kube-proxy"]
    assert records and "has no grant" in records[-1]["reason"]


def test_refusal_by_a_grant_rule_is_audited(deployment: Deployment) -> None:
    with deployment.as_identity("limited") as client:
        _refused(client, "scheduler")
    records = [r for r in deployment.refusals_by("limited") if r.get("profile") == "scheduler"]
    assert len(records) == 1
    assert records[0]["event"] == "certificate.refused"
    assert "does not allow profile scheduler" in records[0]["reason"]


def test_refused_token_creation_is_audited(deployment: Deployment) -> None:
    with deployment.as_identity("limited") as client, pytest.raises(PermissionDenied):
        client.create_bootstrap_token(["kubelet-serving"], "node-7", [], 600)
    records = [
        r
        for r in deployment.refusals_by("limited")
        if r["event"] == "token.create.refused" and r["node_name"] == "node-7"
    ]
    assert len(records) == 1
    assert "may not manage bootstrap tokens" in records[0]["reason"]


def test_refused_token_listing_is_audited(deployment: Deployment) -> None:
    before = len(deployment.refusals_by("wildcard"))
    with deployment.as_identity("wildcard") as client, pytest.raises(PermissionDenied):
        list(client.bootstrap_tokens())
    assert len(deployment.refusals_by("wildcard")) == before + 1


def test_refusal_of_a_token_caller_is_audited_under_its_id(deployment: Deployment) -> None:
    token = _new_token(deployment)
    token_id = token.split(".")[0]
    with deployment.node(token) as node:
        _refused(node, "kubelet-client", {"node_name": "worker-8"})
    records = deployment.refusals_by(f"token:{token_id}")
    assert len(records) == 1
    assert "bound to node 'worker-1'" in records[0]["reason"]
    assert records[0]["parameters"] == {"node_name": "worker-8"}
