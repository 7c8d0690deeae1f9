"""ExternalJWTSigner (KEP-740) under both package names kube-apiserver speaks: ``v1``
(1.34 on) and ``v1alpha1`` (1.32, 1.33). Their messages are identical, so one table of
handlers serves both, each building its own package's response types.

On the unix socket, callers are local processes (kube-apiserver); on the mutual-TLS
port, operators, of whom only those granted ``service_account_signing`` may Sign.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from kubeca_client._proto.externaljwt.v1 import externaljwt_pb2 as pb_v1
from kubeca_client._proto.externaljwt.v1alpha1 import externaljwt_pb2 as pb_v1alpha1
from kubeca_client.errors import Unauthenticated

from kubeca_server.api.methods import Method, Service
from kubeca_server.issuance.jwt_signer import REFUSED_EVENT, TokenSigner
from kubeca_server.issuance.model import LOCAL, OPERATOR, Caller

PACKAGES: tuple[ModuleType, ...] = (pb_v1, pb_v1alpha1)
SERVICE_NAMES = tuple(
    p.DESCRIPTOR.services_by_name["ExternalJWTSigner"].full_name for p in PACKAGES
)


def _known(caller: Caller) -> None:
    if caller.kind not in (LOCAL, OPERATOR):
        raise Unauthenticated("ExternalJWTSigner answers kube-apiserver and operators only")


def _methods(pb: Any, signer: TokenSigner) -> list[Method[Any, Any]]:
    def sign(request: Any, caller: Caller) -> Any:
        _known(caller)
        signed = signer.sign(request.claims, caller)
        return pb.SignJWTResponse(header=signed.header, signature=signed.signature)

    def fetch_keys(request: Any, caller: Caller) -> Any:
        _known(caller)
        key_set = signer.keys()
        stamp = Timestamp()
        stamp.FromDatetime(key_set.loaded_at)
        return pb.FetchKeysResponse(
            keys=[
                pb.Key(key_id=k.kid, key=k.public_der, exclude_from_oidc_discovery=False)
                for k in key_set.published
            ],
            data_timestamp=stamp,
            refresh_hint_seconds=signer.refresh_hint_seconds,
        )

    def metadata(request: Any, caller: Caller) -> Any:
        _known(caller)
        return pb.MetadataResponse(
            max_token_expiration_seconds=int(signer.max_expiration.total_seconds())
        )

    return [
        Method(
            "Sign",
            pb.SignJWTRequest,
            pb.SignJWTResponse,
            sign,
            refusal_event=REFUSED_EVENT,
            describe=lambda request: {"claims_chars": len(request.claims)},
        ),
        Method("FetchKeys", pb.FetchKeysRequest, pb.FetchKeysResponse, fetch_keys),
        Method("Metadata", pb.MetadataRequest, pb.MetadataResponse, metadata),
    ]


def signer_services(
    signer: TokenSigner, identify: Callable[[grpc.ServicerContext], Caller]
) -> list[Service]:
    return [
        Service(name, _methods(pb, signer), identify)
        for name, pb in zip(SERVICE_NAMES, PACKAGES, strict=True)
    ]
