"""The service answers the standard side services a gRPC operator expects."""

from __future__ import annotations

import json

import grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from kubeca_client._proto.kubeca.v1 import kubeca_pb2, kubeca_pb2_grpc
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


def test_a_refusal_outside_issuance_is_audited_too(server: RunningServer) -> None:
    """Anonymous ListProfiles on the bootstrap port: refused, and recorded."""

    before = server.audit_log.read_text().count("\n")
    with grpc.secure_channel(server.bootstrap_address, server.credentials(operator=False)) as ch:
        stub = kubeca_pb2_grpc.CertificateAuthorityStub(ch)
        try:
            stub.ListProfiles(kubeca_pb2.ListProfilesRequest(), timeout=10)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
        else:
            raise AssertionError("an anonymous caller listed the profiles")
    new = [json.loads(line) for line in server.audit_log.read_text().splitlines()[before:]]
    refused = [r for r in new if r["event"] == "request.refused" and r["method"] == "ListProfiles"]
    assert len(refused) == 1
    assert (refused[0]["caller"], refused[0]["status"]) == ("anonymous", "UNAUTHENTICATED")
