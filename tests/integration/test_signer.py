"""The service-account key in a real SoftHSM token, served as ExternalJWTSigner on a
unix socket exactly as kube-apiserver dials it (insecure credentials, authority
``localhost``), and through ``kubeca signer-proxy`` over mutual TLS. Tokens are
assembled as kube-apiserver assembles them and verified with PyJWT."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import socket
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.serialization import load_der_public_key
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kubeca_client._proto.externaljwt.v1 import externaljwt_pb2 as v1
from kubeca_client._proto.externaljwt.v1 import externaljwt_pb2_grpc as v1_grpc
from kubeca_client._proto.externaljwt.v1alpha1 import externaljwt_pb2 as v1alpha1
from kubeca_client._proto.externaljwt.v1alpha1 import externaljwt_pb2_grpc as v1alpha1_grpc

from tests.support import (
    BIN,
    RunningServer,
    free_port,
    make_token,
    run_server_cli,
    write_server_config,
)

ISSUER = "https://kubernetes.default.svc.cluster.local"
AUDIENCE = "https://kubernetes.default.svc.cluster.local"
PACKAGES = [(v1, v1_grpc), (v1alpha1, v1alpha1_grpc)]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**changes: Any) -> str:
    now = int(time.time())
    values: dict[str, Any] = {
        "aud": [AUDIENCE],
        "exp": now + 3600,
        "iat": now,
        "nbf": now,
        "iss": ISSUER,
        "jti": str(uuid.uuid4()),
        "sub": "system:serviceaccount:default:builder",
        "kubernetes.io": {
            "namespace": "default",
            "serviceaccount": {"name": "builder", "uid": "sa-uid"},
            "pod": {"name": "builder-7f9c", "uid": "pod-uid"},
        },
    }
    values.update(changes)
    return b64(json.dumps(values).encode())


@dataclass
class Signer:
    server: RunningServer
    socket: Path

    def channel(self, path: Path | None = None) -> grpc.Channel:
        """As kube-apiserver dials it: insecure on the socket, authority localhost."""
        return grpc.insecure_channel(
            f"unix://{path or self.socket}", options=[("grpc.default_authority", "localhost")]
        )


def start_signer(
    directory: Path, algorithm: str = "RSA-2048", extra: str = "", workers: int = 1
) -> Signer:
    token = make_token(directory / "hsm")
    sock = directory / "run" / "signer.sock"
    sock.parent.mkdir(parents=True)
    config = write_server_config(
        directory / "server",
        token,
        extra=f'[service_account]\nkey_algorithm = "{algorithm}"\nsocket = "{sock}"\n{extra}',
    )
    # The tests' operator acts as a signer proxy too.
    config.write_text(config.read_text() + "service_account_signing = true\n")
    run_server_cli(config, token, "init")
    return Signer(RunningServer(config, token, workers=workers).start(), sock)


@pytest.fixture(scope="module")
def rsa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Signer]:
    signer = start_signer(tmp_path_factory.mktemp("rsa"))
    yield signer
    signer.server.stop()


@pytest.fixture(scope="module")
def ec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Signer]:
    signer = start_signer(tmp_path_factory.mktemp("ec"), "ECDSA-P256")
    yield signer
    signer.server.stop()


def sign_and_verify(
    channel: grpc.Channel, package: tuple[ModuleType, Any], alg: str
) -> dict[str, Any]:
    pb, pb_grpc = package
    stub = pb_grpc.ExternalJWTSignerStub(channel)
    keys = stub.FetchKeys(pb.FetchKeysRequest(), timeout=10).keys
    payload = claims()
    reply = stub.Sign(pb.SignJWTRequest(claims=payload), timeout=10)
    token = f"{reply.header}.{payload}.{reply.signature}"  # as kube-apiserver assembles it
    header = jwt.get_unverified_header(token)
    assert set(header) == {"alg", "kid", "typ"}
    assert header["alg"] == alg and header["typ"] == "JWT"
    published = {k.key_id: load_der_public_key(k.key) for k in keys}
    decoded: dict[str, Any] = jwt.decode(
        token, published[header["kid"]], algorithms=[alg], audience=AUDIENCE, issuer=ISSUER
    )
    return decoded


@pytest.mark.parametrize("package", PACKAGES, ids=["v1", "v1alpha1"])
def test_metadata_and_fetch_keys_answer_what_kube_apiserver_needs(
    rsa: Signer, package: tuple[ModuleType, Any]
) -> None:
    pb, pb_grpc = package
    with rsa.channel() as channel:
        stub = pb_grpc.ExternalJWTSignerStub(channel)
        metadata = stub.Metadata(pb.MetadataRequest(), timeout=10)
        keys = stub.FetchKeys(pb.FetchKeysRequest(), timeout=10)
    assert metadata.max_token_expiration_seconds == 86400
    assert keys.refresh_hint_seconds > 0
    assert keys.data_timestamp.seconds > 0
    assert len(keys.keys) == 1
    [key] = keys.keys
    assert key.key_id == b64(hashlib.sha256(key.key).digest())
    assert load_der_public_key(key.key).key_size == 2048  # type: ignore[union-attr]
    assert not key.exclude_from_oidc_discovery


@pytest.mark.parametrize("package", PACKAGES, ids=["v1", "v1alpha1"])
def test_rs256_tokens_verify_with_pyjwt(rsa: Signer, package: tuple[ModuleType, Any]) -> None:
    with rsa.channel() as channel:
        assert sign_and_verify(channel, package, "RS256")["sub"] == (
            "system:serviceaccount:default:builder"
        )


@pytest.mark.parametrize("package", PACKAGES, ids=["v1", "v1alpha1"])
def test_es256_tokens_verify_with_pyjwt(ec: Signer, package: tuple[ModuleType, Any]) -> None:
    with ec.channel() as channel:
        assert sign_and_verify(channel, package, "ES256")["iss"] == ISSUER


BAD = {
    "foreign issuer": claims(iss="https://other.example"),
    "too long": claims(exp=int(time.time()) + 2 * 86400),
    "issued in the future": claims(iat=int(time.time()) + 3600),
    "not a service account": claims(sub="system:kube-controller-manager"),
    "not base64url": "%%%",
    "not JSON": b64(b"not json"),
    "oversized": "A" * 20000,
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_claims_are_invalid_argument_over_the_socket(rsa: Signer, case: str) -> None:
    with rsa.channel() as channel:
        stub = v1_grpc.ExternalJWTSignerStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Sign(v1.SignJWTRequest(claims=BAD[case]), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "claims refused" in (caught.value.details() or "")


def test_the_socket_is_owner_only(rsa: Signer) -> None:
    info = os.lstat(rsa.socket)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_uid == os.getuid()


def test_64_concurrent_signs_all_succeed_and_each_is_in_the_ledger(rsa: Signer) -> None:
    payloads = [claims() for _ in range(64)]
    with rsa.channel() as channel:
        stub = v1_grpc.ExternalJWTSignerStub(channel)
        with ThreadPoolExecutor(64) as pool:
            replies = list(
                pool.map(lambda p: stub.Sign(v1.SignJWTRequest(claims=p), timeout=30), payloads)
            )
        keys = stub.FetchKeys(v1.FetchKeysRequest(), timeout=10).keys
    public = load_der_public_key(keys[0].key)
    for payload, reply in zip(payloads, replies, strict=True):
        jwt.decode(
            f"{reply.header}.{payload}.{reply.signature}",
            public,
            algorithms=["RS256"],
            audience=AUDIENCE,
        )
    jtis = {json.loads(base64.urlsafe_b64decode(p + "==="))["jti"] for p in payloads}
    records = [json.loads(line) for line in rsa.server.audit_log.read_text().splitlines()]
    signed = {r["jti"] for r in records if r["event"] == "serviceaccount.token_signed"}
    assert jtis <= signed


def test_the_signing_key_never_leaves_the_token(rsa: Signer) -> None:
    state = rsa.server.state_dir
    with_keys = [p for p in state.rglob("*") if p.is_file() and b"PRIVATE KEY" in p.read_bytes()]
    assert with_keys == [state / "tls" / "server.key"]


def test_serve_refuses_a_socket_path_that_is_not_a_socket(tmp_path: Path) -> None:
    token = make_token(tmp_path / "hsm")
    occupied = tmp_path / "not-a-socket"
    occupied.write_text("keep me")
    config = write_server_config(
        tmp_path / "server", token, extra=f'[service_account]\nsocket = "{occupied}"\n'
    )
    run_server_cli(config, token, "init")
    result = run_server_cli(config, token, "serve", check=False)
    assert result.returncode != 0
    assert "is not a socket; refusing to replace it" in result.stderr
    assert "Traceback" not in result.stderr
    assert occupied.read_text() == "keep me"


# --- the proxy --------------------------------------------------------------------


@dataclass
class Proxy:
    process: subprocess.Popen[bytes]
    socket: Path

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)


def start_proxy(client_config: Path, sock: Path, env: dict[str, str]) -> Proxy:
    process = subprocess.Popen(
        [
            str(BIN / "kubeca"),
            "--config",
            str(client_config),
            "signer-proxy",
            "--socket",
            str(sock),
        ],
        env=env,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while not sock.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(
                f"signer-proxy did not start: {process.stderr.read() if process.stderr else ''!r}"
            )
        time.sleep(0.05)
    return Proxy(process, sock)


def test_the_proxy_signs_over_mutual_tls_as_a_granted_operator(rsa: Signer, tmp_path: Path) -> None:
    config = rsa.server.client_config(tmp_path / "client.toml")
    proxy = start_proxy(config, tmp_path / "proxy.sock", rsa.server.token.env)
    try:
        assert stat.S_IMODE(os.lstat(proxy.socket).st_mode) == 0o600
        for package in PACKAGES:
            with rsa.channel(proxy.socket) as channel:
                assert sign_and_verify(channel, package, "RS256")["iss"] == ISSUER
    finally:
        proxy.stop()


def test_the_proxy_of_an_operator_without_the_grant_right_signs_nothing(
    rsa: Signer, tmp_path: Path
) -> None:
    out = tmp_path / "other"
    run_server_cli(
        rsa.server.config,
        rsa.server.token,
        "credentials",
        "issue",
        "--name",
        "no-signing",
        "--out",
        str(out),
    )
    config = tmp_path / "client.toml"
    config.write_text(
        f'address = "{rsa.server.address}"\nca_file = "{out}/ca.crt"\n'
        f'cert_file = "{out}/client.crt"\nkey_file = "{out}/client.key"\n'
    )
    proxy = start_proxy(config, tmp_path / "proxy.sock", rsa.server.token.env)
    try:
        with rsa.channel(proxy.socket) as channel:
            stub = v1_grpc.ExternalJWTSignerStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.Sign(v1.SignJWTRequest(claims=claims()), timeout=10)
    finally:
        proxy.stop()
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "service_account_signing" in (caught.value.details() or "")


def _unanswering_listener() -> socket.socket:
    """A TCP port that completes connections and then never says a word (a service
    hung mid-handshake): only a deadline gets a caller out."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    return listener


@pytest.mark.parametrize("upstream", ["refused", "silent"])
def test_the_proxy_refuses_to_sign_at_once_when_the_service_is_unreachable(
    rsa: Signer, tmp_path: Path, upstream: str
) -> None:
    silent = _unanswering_listener()
    try:
        address = (
            f"127.0.0.1:{free_port()}"
            if upstream == "refused"
            else f"127.0.0.1:{silent.getsockname()[1]}"
        )
        config = rsa.server.client_config(tmp_path / "client.toml", address=address)
        proxy = start_proxy(config, tmp_path / "proxy.sock", rsa.server.token.env)
        try:
            with rsa.channel(proxy.socket) as channel:
                stub = v1_grpc.ExternalJWTSignerStub(channel)
                # Far longer than the proxy's deadline (3 s): a proxy that hung would
                # surface here as DEADLINE_EXCEEDED, not as its own UNAVAILABLE.
                with pytest.raises(grpc.RpcError) as caught:
                    stub.Sign(v1.SignJWTRequest(claims=claims()), timeout=20)
        finally:
            proxy.stop()
    finally:
        silent.close()
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "unreachable" in (caught.value.details() or "")


def test_the_proxy_keeps_serving_keys_but_not_signatures_through_an_outage(
    tmp_path: Path,
) -> None:
    signer = start_signer(tmp_path / "outage")
    proxy = None
    try:
        config = signer.server.client_config(tmp_path / "client.toml")
        proxy = start_proxy(config, tmp_path / "proxy.sock", signer.server.token.env)
        with signer.channel(proxy.socket) as channel:
            stub = v1_grpc.ExternalJWTSignerStub(channel)
            before = stub.FetchKeys(v1.FetchKeysRequest(), timeout=10)
            metadata = stub.Metadata(v1.MetadataRequest(), timeout=10)
            stub.Sign(v1.SignJWTRequest(claims=claims()), timeout=10)
            signer.server.stop()
            assert stub.FetchKeys(v1.FetchKeysRequest(), timeout=10) == before
            assert stub.Metadata(v1.MetadataRequest(), timeout=10) == metadata
            with pytest.raises(grpc.RpcError) as caught:
                stub.Sign(v1.SignJWTRequest(claims=claims()), timeout=20)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        if proxy is not None:
            proxy.stop()
        signer.server.stop()


# --- the HSM going away -----------------------------------------------------------


def _health(channel: grpc.Channel, service: str) -> int:
    reply = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5
    )
    status: int = reply.status
    return status


def _wait_health(channel: grpc.Channel, service: str, status: int) -> None:
    deadline = time.monotonic() + 30
    while _health(channel, service) != status:
        assert time.monotonic() < deadline, f"health of {service} did not become {status}"
        time.sleep(0.2)


def test_hsm_down_makes_sign_unavailable_and_health_not_serving_until_it_returns(
    tmp_path: Path,
) -> None:
    signer = start_signer(tmp_path / "hsm-down", "ECDSA-P256")
    tokens = signer.server.token.dir / "tokens"
    away = signer.server.token.dir / "tokens.away"
    try:
        with signer.channel() as channel:
            stub = v1_grpc.ExternalJWTSignerStub(channel)
            stub.Sign(v1.SignJWTRequest(claims=claims()), timeout=10)
            tokens.rename(away)
            tokens.mkdir()
            with pytest.raises(grpc.RpcError) as caught:
                stub.Sign(v1.SignJWTRequest(claims=claims()), timeout=20)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            _wait_health(
                channel, "v1.ExternalJWTSigner", health_pb2.HealthCheckResponse.NOT_SERVING
            )
            tokens.rmdir()
            away.rename(tokens)
            _wait_health(channel, "v1.ExternalJWTSigner", health_pb2.HealthCheckResponse.SERVING)
            assert stub.Sign(v1.SignJWTRequest(claims=claims()), timeout=10).signature
    finally:
        if away.exists():
            if tokens.exists():
                tokens.rmdir()
            away.rename(tokens)
        signer.server.stop()


def test_a_0660_socket_gets_the_configured_group(tmp_path: Path) -> None:
    import grp

    group = grp.getgrgid(os.getgid()).gr_name
    signer = start_signer(
        tmp_path / "group", extra=f'socket_mode = 0o660\nsocket_group = "{group}"\n'
    )
    try:
        info = os.lstat(signer.socket)
        assert stat.S_IMODE(info.st_mode) == 0o660
        assert info.st_gid == os.getgid()
        with signer.channel() as channel:
            stub = v1_grpc.ExternalJWTSignerStub(channel)
            assert stub.Metadata(v1.MetadataRequest(), timeout=10).max_token_expiration_seconds
    finally:
        signer.server.stop()


def test_with_two_workers_one_owns_the_socket_and_signs(tmp_path: Path) -> None:
    signer = start_signer(tmp_path / "workers", workers=2)
    try:
        deadline = time.monotonic() + 30
        while not signer.socket.exists():  # the supervisor returns before the workers bind
            assert time.monotonic() < deadline, "no worker created the socket"
            time.sleep(0.1)
        with signer.channel() as channel:
            for package in PACKAGES:
                assert sign_and_verify(channel, package, "RS256")["iss"] == ISSUER
    finally:
        signer.server.stop()


def _published(stub: Any) -> dict[str, Any]:
    keys = stub.FetchKeys(v1.FetchKeysRequest(), timeout=10).keys
    return {k.key_id: load_der_public_key(k.key) for k in keys}


def _wait_published(stub: Any, count: int) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while len(published := _published(stub)) != count:
        assert time.monotonic() < deadline, f"FetchKeys did not reach {count} keys"
        time.sleep(0.2)
    return published


def _token(stub: Any) -> str:
    payload = claims()
    reply = stub.Sign(v1.SignJWTRequest(claims=payload), timeout=10)
    return f"{reply.header}.{payload}.{reply.signature}"


def _verifies(token: str, published: dict[str, Any]) -> bool:
    kid = jwt.get_unverified_header(token)["kid"]
    if kid not in published:
        return False
    jwt.decode(token, published[kid], algorithms=["RS256"], audience=AUDIENCE, issuer=ISSUER)
    return True


def test_ca_rotate_verbs_rotate_the_signing_key_without_a_restart(tmp_path: Path) -> None:
    signer = start_signer(tmp_path / "rotate")
    server = signer.server

    def rotate(step: str) -> None:
        run_server_cli(
            server.config, server.token, "ca", "rotate", step, "--authority", "service-account"
        )

    try:
        with signer.channel() as channel:
            stub = v1_grpc.ExternalJWTSignerStub(channel)
            old_token = _token(stub)
            rotate("begin")  # a new key, published before it signs
            published = _wait_published(stub, 2)
            assert (
                jwt.get_unverified_header(_token(stub))["kid"]
                == jwt.get_unverified_header(old_token)["kid"]
            )
            rotate("switch")  # the new key signs; the old stays published
            deadline = time.monotonic() + 30
            while (new_token := _token(stub)) and jwt.get_unverified_header(new_token)[
                "kid"
            ] == jwt.get_unverified_header(old_token)["kid"]:
                assert time.monotonic() < deadline, "the switch did not reach Sign"
                time.sleep(0.2)
            published = _published(stub)
            assert _verifies(old_token, published) and _verifies(new_token, published)
            rotate("finish")  # the old key is no longer published
            published = _wait_published(stub, 1)
            assert not _verifies(old_token, published)
            assert _verifies(new_token, published)
    finally:
        server.stop()
