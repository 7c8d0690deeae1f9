"""The floor under kubeca's cost per certificate here, over the same mutual TLS.

    .venv/bin/python bench/grpc_floor.py [sync|aio|bare] [processes] [seconds] [key type]

Starts 1 or 2 processes serving kubeca's IssueCertificate method name, sharing one port
with SO_REUSEPORT as kubeca's workers do, and drives them with the bench's native load
generator at 16 connections. "sync" and "aio": a handler that reads the peer's auth
context and answers a fixed 2 KB reply, grpcio's own cost per request. "bare": what
cfssl does per certificate, done with this stack's libraries and nothing of kubeca's
(no lint, no check of the HSM's signature, no ledger, no inventory): parse the
request, check the CSR's signature, build an admin-like leaf with cryptography and
have the CA key in SoftHSM sign it (python-pkcs11, one session per process, calls
serialized as hsm-notes.md requires), answer its PEM. Its CPU per certificate is what
a server built the plain way on grpcio, cryptography and python-pkcs11 spends before
any safeguard; kubeca's lint, check, ledger and inventory come on top of it
(docs/architecture.md, "Where the time goes").
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent import futures
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402
from kubeca_client.keys import KeyAlgorithm, build_csr, generate_private_key  # noqa: E402

from bench import loadgen  # noqa: E402
from tests.support import free_port  # noqa: E402

SERVICE, METHOD = "kubeca.v1.CertificateAuthority", "IssueCertificate"
# Field 1 (certificate_pem), 2,048 bytes, holding the marker the load generator checks.
REPLY = b"\x0a\x80\x10" + (b"-----BEGIN CERTIFICATE-----" + b"x" * 2048)[:2048]
REQUEST = b"\x0a\x05admin\x12\x80\x04" + b"y" * 512  # about an IssueCertificate request


def _certificate(
    directory: Path, name: str, issuer: tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[1].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), True)
    )
    if name == "server":
        sans = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), False)
    certificate = builder.sign(issuer[0] if issuer else key, hashes.SHA256())
    (directory / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (directory / f"{name}.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return key, certificate


def _credentials(directory: Path) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [((directory / "server.key").read_bytes(), (directory / "server.crt").read_bytes())],
        root_certificates=(directory / "ca.crt").read_bytes(),
        require_client_auth=True,
    )


def _serve_threads(directory: Path, port: int, handle: Any) -> None:
    """grpcio's sync server, as kubeca's workers run it (16 RPC threads)."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=16), options=[("grpc.so_reuseport", 1)]
    )
    handlers = {METHOD: grpc.unary_unary_rpc_method_handler(handle)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_secure_port(f"127.0.0.1:{port}", _credentials(directory))
    server.start()
    _ready(directory)
    server.wait_for_termination()


def _serve_sync(directory: Path, port: int) -> None:
    def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.auth_context()
        return REPLY

    _serve_threads(directory, port, handle)


def _serve_aio(directory: Path, port: int) -> None:
    async def handle(request: bytes, context: Any) -> bytes:
        context.auth_context()
        return REPLY

    async def main() -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
        handlers = {METHOD: grpc.unary_unary_rpc_method_handler(handle)}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        server.add_secure_port(f"127.0.0.1:{port}", _credentials(directory))
        await server.start()
        _ready(directory)
        await server.wait_for_termination()

    asyncio.run(main())


def _bare_handler() -> Any:
    """cfssl's work per certificate, on this stack: see the module's docstring."""
    from kubeca_client._proto.kubeca.v1 import kubeca_pb2 as pb
    from kubeca_server.keys.pkcs11_backend import Pkcs11Backend

    from bench.issuance import CA_KEY_LABEL
    from tests.support import SOFTHSM_MODULE

    backend = Pkcs11Backend(SOFTHSM_MODULE, os.environ["BARE_TOKEN_LABEL"], os.environ["BARE_PIN"])
    key = backend.find_key(CA_KEY_LABEL)
    assert key is not None, f"the token has no key {CA_KEY_LABEL!r}"
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes")])
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kubeadm:cluster-admins"),
            x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes-admin"),
        ]
    )
    authority = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=True,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    client_auth = x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH])

    def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.auth_context()
        message = pb.IssueCertificateRequest.FromString(request)
        csr = x509.load_pem_x509_csr(message.csr)
        if not csr.is_signature_valid:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "csr signature does not verify")
        public = csr.public_key()
        now = datetime.now(UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=365))
            .add_extension(usage, critical=True)
            .add_extension(client_auth, critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(authority, critical=False)
            .sign(key, hashes.SHA256())
        )
        pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
        return pb.IssueCertificateResponse(certificate_pem=pem).SerializeToString()

    return handle


def _serve_bare(directory: Path, port: int) -> None:
    _serve_threads(directory, port, _bare_handler())


SERVERS = {"sync": _serve_sync, "aio": _serve_aio, "bare": _serve_bare}
READY_SECONDS = 60.0


def _ready(directory: Path) -> None:
    (directory / f"ready-{os.getpid()}").touch()


def _serve_many(mode: str, directory: Path, port: int, processes: int) -> None:
    """The root of the servers' process tree (the bench reads CPU over the tree)."""
    children = [
        subprocess.Popen([sys.executable, __file__, "--serve", mode, str(directory), str(port)])
        for _ in range(processes)
    ]
    for child in children:
        child.wait()


def credentials(directory: Path) -> list[str]:
    """A CA, a server and a client certificate for mutual TLS in ``directory``; the load
    generator's arguments for them."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _certificate(directory, "ca", None)
    _certificate(directory, "server", ca)
    _certificate(directory, "client", ca)
    return [
        "-ca", str(directory / "ca.crt"),
        "-cert", str(directory / "client.crt"), "-key", str(directory / "client.key"),
    ]  # fmt: skip


def token_environment(conf: Path, label: str, pin: str) -> dict[str, str]:
    """What a "bare" server needs to find the bench token's kubernetes-ca key."""
    return {"SOFTHSM2_CONF": str(conf), "BARE_TOKEN_LABEL": label, "BARE_PIN": pin}


@contextlib.contextmanager
def serving(
    mode: str, directory: Path, processes: int, environment: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``processes`` servers of ``mode`` on one port (credentials in ``directory``),
    started and ready; yields the root of their process tree and their address."""
    port = free_port()
    root = subprocess.Popen(
        [sys.executable, __file__, "--serve-many", mode, str(directory), str(port), str(processes)],
        env={**os.environ, **(environment or {})},
        start_new_session=True,  # its own process group: stopped with every server in it
    )
    try:
        deadline = time.monotonic() + READY_SECONDS
        while len(list(directory.glob("ready-*"))) < processes:
            if root.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {mode} servers did not start")
            time.sleep(0.05)
        yield root, f"127.0.0.1:{port}"
    finally:
        os.killpg(root.pid, signal.SIGKILL)
        root.wait()
        for ready in directory.glob("ready-*"):
            ready.unlink()


def _bare_request(directory: Path, algorithm: KeyAlgorithm) -> tuple[bytes, dict[str, str]]:
    """A token whose kubernetes-ca key is of ``algorithm``, made by `kubeca-server init`
    as the bench's is; the bench's own IssueCertificate request; the servers' token
    environment."""
    from bench.issuance import issue_request
    from tests.support import make_token, run_server_cli, write_server_config

    token = make_token(directory / "token", label="floor")
    config = write_server_config(directory / "server", token, key_algorithm=algorithm.value)
    run_server_cli(config, token, "init")
    request = issue_request(build_csr(generate_private_key(KeyAlgorithm.ECDSA_P256)))
    return request, token_environment(token.conf, token.label, token.pin)


USAGE = "usage: grpc_floor.py [sync|aio|bare] [processes] [seconds] [ECDSA-P256|RSA-2048]"


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        mode, directory, port = sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
        SERVERS[mode](directory, port)
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-many":
        _serve_many(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
        return 0
    from bench import issuance

    try:
        mode = sys.argv[1] if len(sys.argv) > 1 else "sync"
        processes = int(sys.argv[2]) if len(sys.argv) > 2 else 2
        seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 5.0
        algorithm = KeyAlgorithm(sys.argv[4] if len(sys.argv) > 4 else "ECDSA-P256")
    except ValueError:
        mode = ""
    if mode not in SERVERS:
        print(USAGE, file=sys.stderr)
        return 2
    loadgen.build()
    with tempfile.TemporaryDirectory(prefix="kubeca-grpc-floor-") as scratch:
        directory = Path(scratch)
        tls = credentials(directory / "tls")
        request, environment = REQUEST, dict[str, str]()
        if mode == "bare":
            request, environment = _bare_request(directory, algorithm)
        (directory / "request.bin").write_bytes(request)
        with serving(mode, directory / "tls", processes, environment) as (root, address):
            args = ["-mode", "grpc", "-target", address, "-body", str(directory / "request.bin")]
            phase = issuance.measure(
                mode, algorithm, root.pid, issuance.HEADLINE, [*args, *tls], seconds
            )
    print(
        f"grpc {mode}"
        + (f" ({algorithm.value} CA key)" if mode == "bare" else "")
        + f", {processes} process(es), {issuance.HEADLINE} connections: {phase.rate:.0f} "
        f"requests/s, p50 {phase.p50_ms:.1f} ms, p99 {phase.p99_ms:.1f} ms, errors "
        f"{phase.errors}, server CPU {phase.server_cpu_ms_per_cert:.3f} ms/request, "
        f"{phase.switches_per_cert:.1f} context switches/request, idle cores "
        f"{phase.idle_cores:.2f}, load generator {phase.loadgen_cores:.2f} cores"
    )
    return 1 if phase.errors else 0


if __name__ == "__main__":
    sys.exit(main())
