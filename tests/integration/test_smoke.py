"""The service answers the standard side services a gRPC operator expects."""

from __future__ import annotations

from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from kubeca_client.client import Client

from tests.support import RunningServer


def test_service_lists_three_authorities(client: Client) -> None:
    names = sorted(ca.authority for ca in client.ca_certificates())
    assert names == ["etcd-ca", "front-proxy-ca", "kubernetes-ca"]


def test_reflection_describes_the_api(server: RunningServer) -> None:
    with server.channel() as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {"kubeca.v1.CertificateAuthority", "grpc.health.v1.Health"} <= services
        method = database.FindFileContainingSymbol("kubeca.v1.CertificateAuthority")
        assert "IssueCertificate" in str(method.service)
