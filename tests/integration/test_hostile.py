"""Issue 10 over mutual TLS to the real server: the defects of part A, and a short run
of the campaign (bench/campaign.py; ``make campaign`` runs the full one)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from kubeca_client._proto.kubeca.v1 import kubeca_pb2 as pb
from kubeca_client._proto.kubeca.v1 import kubeca_pb2_grpc as pb_grpc

from tests.support import RunningServer
from tests.unit.helpers import make_csr

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stub(server: RunningServer) -> Iterator[pb_grpc.CertificateAuthorityStub]:
    with server.channel() as channel:
        yield pb_grpc.CertificateAuthorityStub(channel)


def _refusal(
    stub: pb_grpc.CertificateAuthorityStub, request: pb.IssueCertificateRequest
) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        stub.IssueCertificate(request, timeout=30)
    return caught.value


def test_a_csr_version_other_than_0_is_invalid_argument(
    stub: pb_grpc.CertificateAuthorityStub,
) -> None:
    der = bytearray(make_csr(der=True))
    der[der.index(bytes.fromhex("020100")) + 2] = 1
    error = _refusal(stub, pb.IssueCertificateRequest(profile="admin", csr=bytes(der)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "version" in (error.details() or "")


@pytest.mark.parametrize(
    "extra", ["*.default.svc.cluster.local", "*.default.svc", "*.default", "::ffff:10.96.0.1"]
)
def test_kubelet_serving_is_not_issued_for_the_api_server(
    stub: pb_grpc.CertificateAuthorityStub, extra: str
) -> None:
    request = pb.IssueCertificateRequest(
        profile="kubelet-serving",
        csr=make_csr(),
        parameters={"node_name": "node-1", "extra_sans": extra},
    )
    error = _refusal(stub, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_huge_hostile_subject_is_invalid_argument_not_resource_exhausted(
    stub: pb_grpc.CertificateAuthorityStub,
) -> None:
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "\U0001d4c1" * 3000)])
    request = pb.IssueCertificateRequest(profile="admin", csr=make_csr(name=name, der=True))
    error = _refusal(stub, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len((error.details() or "").encode()) <= 1024


def test_a_short_campaign_gets_no_internal_and_no_certificate_out_of_policy() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    import campaign

    result = campaign.run(1500, seed=3)
    assert result["internal"] == 0
    assert result["out_of_policy"] == 0, result["out_of_policy_examples"]
    assert result["unexpected"] == [], result["unexpected"]
    assert result["issued"] > 0  # the policy check saw certificates
