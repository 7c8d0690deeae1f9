"""api/methods.py: what every method of every service gets from one wrapper.

A real in-process gRPC server on a unix socket, in front of the domain on in-memory
backends: raw bytes decoded by the wrapper, the taxonomy mapped to status codes with a
bounded message, INTERNAL with an incident id for anything else, one audit record per
refusal (with what the decision learned), and metrics counted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2
from kubeca_client._proto.kubeca.v1 import kubeca_pb2 as pb
from kubeca_client.errors import InvalidArgument, Unavailable
from kubeca_server.api.ca_service import CAHandlers, ca_service
from kubeca_server.api.health import HealthMonitor
from kubeca_server.api.listeners import UnixSocket
from kubeca_server.api.methods import MAX_STATUS_MESSAGE, Environment, Method, Service
from kubeca_server.api.server import RunningServer, serve
from kubeca_server.issuance.model import OPERATOR, Caller
from kubeca_server.metrics import Metrics

from tests.unit.conftest import EVERYTHING, World
from tests.unit.helpers import make_csr, subject


class RecordingMetrics(Metrics):
    def __init__(self) -> None:
        super().__init__(enabled=False)
        self.refusals: list[tuple[str, str, str]] = []
        self.requests: list[str] = []

    def refused(self, method: str, profile: str, reason: str) -> None:
        self.refusals.append((method, profile, reason))

    def request(self, method: str, seconds: float) -> None:
        self.requests.append(method)


class Rechecks:
    def __init__(self) -> None:
        self.count = 0

    def recheck_soon(self) -> None:
        self.count += 1


def identify(context: grpc.ServicerContext) -> Caller:
    """Tests say who they are in metadata; production identifies by TLS."""
    for key, value in context.invocation_metadata():
        if key == "x-test-identity":
            return Caller(str(value), context.peer(), OPERATOR)
    return Caller("anonymous", context.peer(), "anonymous")


def _raise(error: BaseException) -> Any:
    raise error


def _handlers(world: World, metrics: Metrics) -> CAHandlers:
    core = world.core
    return CAHandlers(core.pipeline, core.registry, core.inventory, core.tokens, core.crls, metrics)


@pytest.fixture
def running(
    world: World, tmp_path: Path
) -> Iterator[tuple[grpc.Channel, World, RecordingMetrics, Rechecks]]:
    metrics = RecordingMetrics()
    rechecks = Rechecks()
    real = ca_service(_handlers(world, metrics))
    probe = Service(
        "test.Probe",
        (
            Method(
                "Refuse",
                empty_pb2.Empty,
                empty_pb2.Empty,
                lambda request, caller: _raise(
                    InvalidArgument("x" * 10_000, {"learned": "something"})
                ),
                "probe.refused",
            ),
            Method(
                "Crash",
                empty_pb2.Empty,
                empty_pb2.Empty,
                lambda request, caller: _raise(KeyError("secret-detail")),
                "probe.refused",
            ),
            Method(
                "Unreachable",
                empty_pb2.Empty,
                empty_pb2.Empty,
                lambda request, caller: _raise(Unavailable("the HSM went away")),
            ),
        ),
        identify,
    )
    service = dataclasses.replace(real, identify=identify)
    socket = tmp_path / "api.sock"
    health = HealthMonitor(lambda: None, (service.name,))
    env = Environment(world.core.ledger, metrics, rechecks)
    server: RunningServer = serve(
        [service, probe],
        [UnixSocket(socket)],
        env,
        health,
        max_request_bytes=64 * 1024,
        reuse_port=False,
    )
    channel = grpc.insecure_channel(f"unix://{socket}")
    try:
        yield channel, world, metrics, rechecks
    finally:
        channel.close()
        server.stop(0)


def _call(channel: grpc.Channel, method: str, request: bytes, identity: str = "") -> grpc.RpcError:
    call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    metadata = (("x-test-identity", identity),) if identity else ()
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=10, metadata=metadata)
    return caught.value


def test_undecodable_bytes_are_invalid_argument_and_audited(running: Any) -> None:
    channel, world, metrics, _ = running
    error = _call(
        channel, "/kubeca.v1.CertificateAuthority/IssueCertificate", b"\xff\xff\xff", "op"
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid kubeca.v1.IssueCertificateRequest message" in (error.details() or "")
    [record] = world.events("certificate.refused")
    assert record["method"] == "IssueCertificate" and record["caller"] == "op"
    assert record["status"] == "INVALID_ARGUMENT"
    assert ("IssueCertificate", "", "INVALID_ARGUMENT") in metrics.refusals


def test_a_refusal_has_a_bounded_message_and_one_record_with_what_was_learned(
    running: Any,
) -> None:
    channel, world, _, _ = running
    error = _call(channel, "/test.Probe/Refuse", b"", "op")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = error.details() or ""
    assert len(details) <= MAX_STATUS_MESSAGE and details.endswith("...")
    [record] = world.events("probe.refused")
    assert record["learned"] == "something"
    assert record["outcome"] == "refused" and record["method"] == "Refuse"


def test_anything_unexpected_is_internal_with_an_incident_and_no_detail(running: Any) -> None:
    channel, world, metrics, _ = running
    error = _call(channel, "/test.Probe/Crash", b"", "op")
    assert error.code() == grpc.StatusCode.INTERNAL
    details = error.details() or ""
    assert "incident" in details and "secret-detail" not in details
    [record] = world.events("probe.refused")
    assert record["status"] == "INTERNAL" and record["outcome"] == "error"
    assert record["incident"] in details
    assert "secret-detail" not in str(record)
    assert ("Crash", "", "INTERNAL") in metrics.refusals


def test_unavailable_makes_health_look_again_at_once(running: Any) -> None:
    channel, _, _, rechecks = running
    error = _call(channel, "/test.Probe/Unreachable", b"", "op")
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert rechecks.count == 1


def test_an_escalation_attempt_is_audited_with_its_requested_subject(running: Any) -> None:
    """The pipeline refuses; the wrapper's one record carries what the pipeline read."""
    channel, world, _, _ = running
    csr = make_csr(name=subject("kubernetes-admin", "system:masters"))
    request = pb.IssueCertificateRequest(profile="admin", csr=csr).SerializeToString()
    error = _call(channel, "/kubeca.v1.CertificateAuthority/IssueCertificate", request, "op-x")
    # op-x has no grant at all: refused before anything else.
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    error = _call(
        channel,
        "/kubeca.v1.CertificateAuthority/IssueCertificate",
        request,
        EVERYTHING.identity,
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    records = world.events("certificate.refused")
    assert [r["status"] for r in records] == ["PERMISSION_DENIED", "INVALID_ARGUMENT"]
    assert records[1]["requested_subject"] == "CN=kubernetes-admin,O=system:masters"
    assert records[1]["public_key_sha256"]
    assert records[1]["profile"] == "admin"


def test_each_refusal_is_recorded_once(running: Any) -> None:
    channel, world, _, _ = running
    request = pb.RevokeCertificateRequest(serial="abc").SerializeToString()
    error = _call(channel, "/kubeca.v1.CertificateAuthority/RevokeCertificate", request, "nobody")
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert len(world.events("certificate.revoke_refused")) == 1
    assert len(world.records()) == 1


def test_a_huge_hostile_subject_gets_a_small_message_and_a_clipped_reason(running: Any) -> None:
    # Issue 10, defect 7: four-byte characters, percent-encoded in grpc-message, once made
    # a trailer larger than a client's header limit (RESOURCE_EXHAUSTED, not the refusal).
    from cryptography import x509
    from cryptography.x509.oid import NameOID
    from kubeca_server.ledger.audit import MAX_REASON

    channel, world, _, _ = running
    hostile = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "\U0001d4c1" * 3_000)])
    request = pb.IssueCertificateRequest(profile="admin", csr=make_csr(name=hostile, der=True))
    error = _call(
        channel,
        "/kubeca.v1.CertificateAuthority/IssueCertificate",
        request.SerializeToString(),
        EVERYTHING.identity,
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = error.details() or ""
    assert "does not match what this profile issues" in details
    assert details.isascii() and len(details) <= MAX_STATUS_MESSAGE
    [record] = world.events("certificate.refused")
    assert len(record["reason"]) <= MAX_REASON
