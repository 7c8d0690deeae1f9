"""One gRPC server: its services, health, reflection, and listeners."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kubeca_server.api.health import HealthMonitor
from kubeca_server.api.listeners import Listener, UnixSocket, bind, secure
from kubeca_server.api.methods import Environment, Service, generic_handler

RPC_THREADS = 16
MAX_CONCURRENT_RPCS = 256
MAX_SEND_BYTES = 4 * 1024 * 1024


@dataclass
class RunningServer:
    server: grpc.Server
    ports: list[int]

    def stop(self, grace: float) -> None:
        self.server.stop(grace).wait()


def serve(
    services: Sequence[Service],
    listeners: Sequence[Listener],
    env: Environment,
    health: HealthMonitor,
    *,
    max_request_bytes: int,
    reuse_port: bool,
) -> RunningServer:
    """Build, bind and start a server for ``services`` on ``listeners``. Services on one
    server are reachable from every one of its listeners: a service meant for one kind
    of listener (the signer, on a unix socket) gets a server of its own."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=RPC_THREADS, thread_name_prefix="rpc"),
        options=[
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            ("grpc.max_receive_message_length", max_request_bytes),
            ("grpc.max_send_message_length", MAX_SEND_BYTES),
        ],
        maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS,
    )
    server.add_generic_rpc_handlers(tuple(generic_handler(s, env) for s in services))
    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    reflection.enable_server_reflection(
        (*(s.name for s in services), reflection.SERVICE_NAME, "grpc.health.v1.Health"), server
    )
    ports = [bind(server, listener) for listener in listeners]
    server.start()
    for listener in listeners:
        if isinstance(listener, UnixSocket):
            secure(listener)
    return RunningServer(server, ports)
