"""kubeca_client.client over a stand-in stub: what the library asks the service and
how it puts the answers together."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from kubeca_client._proto.kubeca.v1 import kubeca_pb2 as pb
from kubeca_client.client import Client
from kubeca_client.errors import KubecaError, NotFound, Unauthenticated, Unavailable


class PagedInventory:
    """ListCertificates as the service answers it: ``size`` records a page."""

    def __init__(self, serials: list[str], size: int) -> None:
        self.serials = serials
        self.size = size
        self.requests: list[pb.ListCertificatesRequest] = []

    def ListCertificates(
        self, request: pb.ListCertificatesRequest, timeout: float
    ) -> pb.ListCertificatesResponse:
        self.requests.append(request)
        start = int(request.page_token or 0)
        page = self.serials[start : start + self.size]
        more = start + self.size < len(self.serials)
        return pb.ListCertificatesResponse(
            certificates=[pb.CertificateRecord(serial=s, authority="etcd-ca") for s in page],
            next_page_token=str(start + self.size) if more else "",
        )


@pytest.fixture
def client() -> Iterator[Client]:
    # No call reaches the channel: the stub is replaced below.
    made = Client("127.0.0.1:1", 1.0, credentials=grpc.ssl_channel_credentials())
    yield made
    made.close()


@pytest.mark.parametrize("count", [0, 3, 5, 1201])
def test_listing_certificates_follows_every_page(client: Client, count: int) -> None:
    serials = [f"{n:04x}" for n in range(count)]
    service = PagedInventory(serials, 5 if count < 100 else 500)
    stub: Any = service
    client._stubs = [stub]
    listed = client.certificates(authority="etcd-ca", revoked_only=True)
    assert [c.serial for c in listed] == serials
    assert len(service.requests) == max(1, -(-count // service.size))
    assert all(r.authority == "etcd-ca" and r.revoked_only for r in service.requests)
    assert service.requests[0].page_token == ""


class PagedTokens:
    """ListBootstrapTokens as the service answers it: ``size`` tokens a page."""

    def __init__(self, ids: list[str], size: int) -> None:
        self.ids = ids
        self.size = size
        self.requests: list[pb.ListBootstrapTokensRequest] = []

    def ListBootstrapTokens(
        self, request: pb.ListBootstrapTokensRequest, timeout: float
    ) -> pb.ListBootstrapTokensResponse:
        self.requests.append(request)
        start = int(request.page_token or 0)
        more = start + self.size < len(self.ids)
        return pb.ListBootstrapTokensResponse(
            tokens=[pb.BootstrapToken(token_id=t) for t in self.ids[start : start + self.size]],
            next_page_token=str(start + self.size) if more else "",
        )


@pytest.mark.parametrize("count", [0, 4, 250])
def test_listing_tokens_follows_every_page(client: Client, count: int) -> None:
    ids = [f"t{n:05d}" for n in range(count)]
    service = PagedTokens(ids, 100)
    stub: Any = service
    client._stubs = [stub]
    assert [t.token_id for t in client.bootstrap_tokens()] == ids
    assert len(service.requests) == max(1, -(-count // service.size))
    assert service.requests[0].page_token == ""


class Refusal(grpc.RpcError):
    """What a stub raises for a failed call: a status code and its details."""

    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class Replica:
    """A stand-in replica: answers GetCRL, or raises ``failure`` ``failures`` times."""

    def __init__(self, name: str, failure: grpc.StatusCode | None = None, failures: int = 10**6):
        self.name, self.failure, self.failures, self.calls = name, failure, failures, 0

    def GetCRL(self, request: pb.GetCRLRequest, timeout: float, metadata: Any) -> Any:
        self.calls += 1
        assert timeout > 0  # every try carries what is left of the call's deadline
        if self.failure is not None and self.calls <= self.failures:
            raise Refusal(self.failure, f"{self.name} says {self.failure.name}")
        raise Refusal(grpc.StatusCode.NOT_FOUND, f"answered by {self.name}")


def replicas(*stubs: Replica, timeout: float = 2.0) -> Client:
    made = Client(
        [f"127.0.0.{n + 1}:1" for n in range(len(stubs))],
        timeout,
        credentials=grpc.ssl_channel_credentials(),
    )
    fake: Any = list(stubs)
    made._stubs = fake
    return made


def test_an_unavailable_replica_is_left_for_the_next_which_then_comes_first() -> None:
    down, up = Replica("a", grpc.StatusCode.UNAVAILABLE), Replica("b")
    with replicas(down, up) as client:
        # NOT_FOUND is an answer: it comes from b, once, and is raised as it is.
        with pytest.raises(NotFound, match="answered by b"):
            client.crl("etcd-ca")
        assert (down.calls, up.calls) == (1, 1)
        assert client.address == "127.0.0.2:1"
        with pytest.raises(NotFound, match="answered by b"):
            client.crl("etcd-ca")
        assert (down.calls, up.calls) == (1, 2)  # b, the one that answered, first


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    ],
)
def test_a_refusal_is_never_asked_again_elsewhere(code: grpc.StatusCode) -> None:
    first, second = Replica("a", code), Replica("b")
    with (
        replicas(first, second) as client,
        pytest.raises(KubecaError, match=r"a says|did not answer"),
    ):
        client.crl("etcd-ca")
    assert (first.calls, second.calls) == (1, 0)


def test_replicas_unavailable_for_a_while_are_tried_round_after_round() -> None:
    a, b = (
        Replica("a", grpc.StatusCode.UNAVAILABLE, 3),
        Replica("b", grpc.StatusCode.UNAVAILABLE, 3),
    )
    with replicas(a, b, timeout=10) as client, pytest.raises(NotFound):
        client.crl("etcd-ca")
    assert a.calls + b.calls == 7  # three rounds refused, then a answered


def test_when_every_replica_stays_unavailable_the_call_ends_unavailable_at_its_deadline() -> None:
    a, b = Replica("a", grpc.StatusCode.UNAVAILABLE), Replica("b", grpc.StatusCode.UNAVAILABLE)
    with replicas(a, b, timeout=0.5) as client, pytest.raises(Unavailable, match="says"):
        client.crl("etcd-ca")
    assert a.calls >= 1 and b.calls >= 1


def test_a_refused_client_certificate_everywhere_is_unauthenticated_after_one_round() -> None:
    closed = grpc.StatusCode.UNAVAILABLE
    a, b = Replica("a", closed), Replica("b", closed)
    for replica in (a, b):
        replica.GetCRL = _socket_closed(replica)  # type: ignore[method-assign]
    with replicas(a, b, timeout=10) as client, pytest.raises(Unauthenticated):
        client.crl("etcd-ca")
    assert (a.calls, b.calls) == (1, 1)


def _socket_closed(replica: Replica) -> Any:
    def call(request: pb.GetCRLRequest, timeout: float, metadata: Any) -> Any:
        replica.calls += 1
        raise Refusal(grpc.StatusCode.UNAVAILABLE, "Socket closed")

    return call


def test_a_single_server_answers_unavailable_without_retrying() -> None:
    down = Replica("a", grpc.StatusCode.UNAVAILABLE)
    with replicas(down) as client, pytest.raises(Unavailable):
        client.crl("etcd-ca")
    assert down.calls == 1
