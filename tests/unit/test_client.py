"""kubeca_client.client over a stand-in stub: what the library asks the service and
how it puts the answers together."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from kubeca_client._proto.kubeca.v1 import kubeca_pb2 as pb
from kubeca_client.client import Client


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
    client._stub = stub
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
    client._stub = stub
    assert [t.token_id for t in client.bootstrap_tokens()] == ids
    assert len(service.requests) == max(1, -(-count // service.size))
    assert service.requests[0].page_token == ""
