"""A tiny HTTPS endpoint on loopback that stands in for kube-apiserver's TLS front door.

It serves a given certificate and key, requires a client certificate verified against
one CA file only (as kube-apiserver's ``--client-ca-file``), answers ``GET /healthz``
with ``ok`` and ``GET /version`` with JSON, and records, per connection, the client
certificate it accepted or the handshake it refused.

The listening socket is bound when the object is made, so its port can go into a
kubeconfig (or a certificate request) before the certificate it will serve exists.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509

VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-kubeca-test",
    "platform": "linux/amd64",
}
HANDSHAKE_TIMEOUT = 10.0


@dataclass
class Seen:
    """What the endpoint saw: accepted client certificates, request paths, refusals."""

    clients: list[x509.Certificate] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self.server.endpoint.record_path(self.path)
        if self.path == "/healthz":
            self._reply(200, b"ok", "text/plain; charset=utf-8")
        elif self.path == "/version":
            self._reply(200, json.dumps(VERSION).encode(), "application/json")
        else:
            self._reply(404, b"not found", "text/plain; charset=utf-8")

    def _reply(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep the test output clean


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, endpoint: TLSEndpoint) -> None:
        self.endpoint = endpoint
        super().__init__(("127.0.0.1", 0), _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """The TLS handshake runs here, in the connection's own thread."""
        request.settimeout(HANDSHAKE_TIMEOUT)
        try:
            tls = self.endpoint.context().wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            self.endpoint.record_refusal(exc)
            return
        try:
            der = tls.getpeercert(binary_form=True)
            if der is not None:
                self.endpoint.record_client(x509.load_der_x509_certificate(der))
            _Handler(tls, client_address, self)
        finally:
            tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client going away mid-request is not the test's concern


class TLSEndpoint:
    """HTTPS on 127.0.0.1:<port>; ``start`` once the certificate files exist."""

    def __init__(self) -> None:
        self._server = _Server(self)
        self._thread: threading.Thread | None = None
        self._context: ssl.SSLContext | None = None
        self._changed = threading.Condition()
        self.seen = Seen()

    @property
    def port(self) -> int:
        port: int = self._server.server_address[1]
        return port

    def context(self) -> ssl.SSLContext:
        assert self._context is not None, "start() the endpoint first"
        return self._context

    def start(self, cert: Path, key: Path, client_ca: Path) -> TLSEndpoint:
        self.reload(cert, key, client_ca)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()
        return self

    def reload(self, cert: Path, key: Path, client_ca: Path) -> None:
        """Read the files again, as a restarted kube-apiserver would: new connections
        get the new certificate and client CA, on the same port."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert, key)
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=client_ca)
        self._context = context

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._server.server_close()

    def reset(self) -> Seen:
        """What was seen so far; the record starts afresh."""
        with self._changed:
            seen, self.seen = self.seen, Seen()
        return seen

    def wait_for(self, condition: Callable[[Seen], bool], timeout: float = 5.0) -> bool:
        """Wait until ``condition`` holds for what was seen (a refusal is recorded by the
        server's thread after its alert went out, so possibly after the client gave up)."""
        with self._changed:
            return self._changed.wait_for(lambda: condition(self.seen), timeout)

    def _record(self, update: Callable[[Seen], None]) -> None:
        with self._changed:
            update(self.seen)
            self._changed.notify_all()

    def record_client(self, certificate: x509.Certificate) -> None:
        self._record(lambda seen: seen.clients.append(certificate))

    def record_path(self, path: str) -> None:
        self._record(lambda seen: seen.paths.append(path))

    def record_refusal(self, exc: BaseException) -> None:
        self._record(lambda seen: seen.refused.append(str(exc)))


def client_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """A client context that checks the server's name against ``ca`` and presents a cert."""
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = True
    context.load_cert_chain(cert, key)
    return context


def https_get(port: int, path: str, context: ssl.SSLContext, server_hostname: str) -> bytes:
    """GET ``path`` from 127.0.0.1:``port``, verifying the server as ``server_hostname``."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=HANDSHAKE_TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        tls.sendall(f"GET {path} HTTP/1.0\r\nHost: {server_hostname}\r\n\r\n".encode())
        chunks = []
        while chunk := tls.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)
