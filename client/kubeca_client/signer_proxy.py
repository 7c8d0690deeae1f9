"""`kubeca signer-proxy`: kube-apiserver's ExternalJWTSigner socket on a control-plane
node, forwarded over mutual TLS to the HSM-backed kubeca service.

kube-apiserver dials a local unix socket; the key is elsewhere. The proxy serves
``v1`` and ``v1alpha1`` on the socket and passes each request's bytes, unchanged, to
the same method of the service, as an operator whose grant allows
``service_account_signing``. It never signs anything itself and holds no key:

- With several replicas in the client config, an unreachable one passes the call to
  the next, within the same deadline.
- Sign is never cached and never waits for a connection: with the service
  unreachable it answers UNAVAILABLE within ``deadline`` (well under the time
  kube-apiserver gives a call), so a token request fails fast instead of hanging.
- FetchKeys and Metadata are cached for ``cache_seconds``, and the last good answer
  is served while the service is unreachable: kube-apiserver keeps verifying tokens
  (and can restart) through a short outage of the service.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import grpc

from kubeca_client._proto.externaljwt.v1 import externaljwt_pb2 as v1
from kubeca_client._proto.externaljwt.v1alpha1 import externaljwt_pb2 as v1alpha1
from kubeca_client.text import clip
from kubeca_client.unix_socket import clear_socket_path, owner_only, secure_socket

DEFAULT_DEADLINE_SECONDS = 3.0
DEFAULT_CACHE_SECONDS = 30.0
MAX_REQUEST_BYTES = 64 * 1024
CACHED = ("FetchKeys", "Metadata")
SERVICES = tuple(
    p.DESCRIPTOR.services_by_name["ExternalJWTSigner"].full_name for p in (v1, v1alpha1)
)
# What an upstream failure tells kube-apiserver: its own status, except that every way
# of not reaching the service is UNAVAILABLE.
UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


@dataclass
class _Cached:
    reply: bytes
    fetched: float


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("context.abort returned")


class SignerProxy:
    def __init__(
        self,
        upstreams: Sequence[grpc.Channel],
        deadline: float = DEFAULT_DEADLINE_SECONDS,
        cache_seconds: float = DEFAULT_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._upstreams = tuple(upstreams)
        self._deadline = deadline
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._cache: dict[str, _Cached] = {}
        self._lock = threading.Lock()

    def _forward(self, path: str, request: bytes) -> bytes:
        """The first replica's answer; an unreachable one passes the call to the next,
        all within one ``deadline``."""
        deadline = self._clock() + self._deadline
        for index, upstream in enumerate(self._upstreams):
            call = upstream.unary_unary(path, request_serializer=None, response_deserializer=None)
            remaining = max(0.001, deadline - self._clock())
            try:
                reply: bytes = call(request, timeout=remaining, wait_for_ready=False)
            except grpc.RpcError as exc:
                last = index == len(self._upstreams) - 1
                if last or exc.code() not in UNREACHABLE or self._clock() >= deadline:
                    raise
                continue
            return reply
        raise AssertionError("a proxy has at least one upstream")

    def _handler(self, path: str, cached: bool) -> Callable[[bytes, grpc.ServicerContext], bytes]:
        def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
            hit: _Cached | None = None
            if cached:
                with self._lock:
                    hit = self._cache.get(path)
                if hit is not None and self._clock() - hit.fetched < self._cache_seconds:
                    return hit.reply
            try:
                reply = self._forward(path, request)
            except grpc.RpcError as exc:
                code: grpc.StatusCode = exc.code()
                if code in UNREACHABLE:
                    if cached and hit is not None:
                        return hit.reply  # the last good answer, through the outage
                    _abort(
                        context,
                        grpc.StatusCode.UNAVAILABLE,
                        f"the kubeca service is unreachable ({code.name}); nothing was signed",
                    )
                details = exc.details() or code.name
                _abort(context, code, clip(str(details), 512))
            if cached:
                with self._lock:
                    self._cache[path] = _Cached(reply, self._clock())
            return reply

        return handle

    def handlers(self) -> list[grpc.GenericRpcHandler[bytes, bytes]]:
        result: list[grpc.GenericRpcHandler[bytes, bytes]] = []
        for service in SERVICES:
            methods = {
                name: grpc.unary_unary_rpc_method_handler(
                    self._handler(f"/{service}/{name}", name in CACHED),
                    request_deserializer=None,
                    response_serializer=None,
                )
                for name in ("Sign", "FetchKeys", "Metadata")
            }
            result.append(grpc.method_handlers_generic_handler(service, methods))
        return result


def serve(proxy: SignerProxy, socket: Path, mode: int, group: str | None) -> grpc.Server:
    """The proxy on ``socket``: refused if the path holds anything but a socket."""
    clear_socket_path(socket)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="proxy"),
        options=[("grpc.max_receive_message_length", MAX_REQUEST_BYTES)],
    )
    server.add_generic_rpc_handlers(tuple(proxy.handlers()))
    with owner_only():
        server.add_insecure_port(f"unix://{socket}")
    server.start()
    secure_socket(socket, mode, group)
    return server
