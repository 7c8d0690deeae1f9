"""grpcio's own cost per request here: a servicer that does nothing, over mutual TLS.

    .venv/bin/python bench/grpc_floor.py [sync|aio] [processes] [seconds]

Starts 1 or 2 processes serving kubeca's IssueCertificate method name with a handler
that reads the peer's auth context and answers a fixed 2 KB reply, sharing one port
with SO_REUSEPORT as kubeca's workers do, and drives them with the bench's native load
generator at 16 connections. The server CPU per request is the floor under anything
kubeca does per certificate over gRPC (docs/architecture.md, "Where the time goes").
"""

from __future__ import annotations

import asyncio
import ipaddress
import subprocess
import sys
import tempfile
import time
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

from bench import loadgen, procstat  # noqa: E402
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


def _serve_sync(directory: Path, port: int) -> None:
    def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.auth_context()
        return REPLY

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=16), options=[("grpc.so_reuseport", 1)]
    )
    handlers = {METHOD: grpc.unary_unary_rpc_method_handler(handle)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_secure_port(f"127.0.0.1:{port}", _credentials(directory))
    server.start()
    server.wait_for_termination()


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
        await server.wait_for_termination()

    asyncio.run(main())


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        mode, directory, port = sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
        (_serve_sync if mode == "sync" else _serve_aio)(directory, port)
        return 0
    mode = sys.argv[1] if len(sys.argv) > 1 else "sync"
    processes = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    seconds = sys.argv[3] if len(sys.argv) > 3 else "5"
    if mode not in ("sync", "aio"):
        print("usage: grpc_floor.py [sync|aio] [processes] [seconds]", file=sys.stderr)
        return 2
    loadgen.build()
    with tempfile.TemporaryDirectory(prefix="kubeca-grpc-floor-") as scratch:
        directory = Path(scratch)
        ca = _certificate(directory, "ca", None)
        _certificate(directory, "server", ca)
        _certificate(directory, "client", ca)
        (directory / "request.bin").write_bytes(REQUEST)
        port = free_port()
        servers = [
            subprocess.Popen([sys.executable, __file__, "--serve", mode, str(directory), str(port)])
            for _ in range(processes)
        ]
        try:
            time.sleep(2)  # imports and binding
            cpu: dict[str, float] = {}

            def spent() -> float:
                return sum(procstat.cpu_seconds(s.pid).get(s.pid, 0.0) for s in servers)

            def mark(when: str) -> None:
                cpu[when] = spent()
                cpu[f"{when} switches"] = sum(procstat.context_switches(s.pid) for s in servers)

            args = [
                "-mode", "grpc", "-target", f"127.0.0.1:{port}",
                "-body", str(directory / "request.bin"), "-ca", str(directory / "ca.crt"),
                "-cert", str(directory / "client.crt"), "-key", str(directory / "client.key"),
                "-c", "16", "-seconds", seconds,
            ]  # fmt: skip
            result = loadgen.run_phase(args, lambda: mark("before"), lambda: mark("after"))
        finally:
            for server in servers:
                server.kill()
                server.wait()
    per_request = 1000 * (cpu["after"] - cpu["before"]) / max(result.completed, 1)
    switches = (cpu["after switches"] - cpu["before switches"]) / max(result.completed, 1)
    print(
        f"grpc {mode}, {processes} process(es), 16 connections: {result.rate:.0f} requests/s, "
        f"p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, errors {result.errors}, "
        f"server CPU {per_request:.3f} ms/request, {switches:.1f} context switches/request, "
        f"load generator {result.loadgen_cpu_seconds / result.seconds:.2f} cores"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
