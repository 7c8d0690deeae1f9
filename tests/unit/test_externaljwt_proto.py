"""The compiled ExternalJWTSigner descriptors, held to Kubernetes' definition
(staging/src/k8s.io/externaljwt/apis/{v1,v1alpha1}/api.proto; ../shared/reference/
externaljwt.md): kube-apiserver speaks these names and numbers on the wire, so a
renamed field or a changed number would break it silently."""

from __future__ import annotations

from types import ModuleType

import pytest
from google.protobuf.descriptor import FieldDescriptor
from kubeca_client._proto.externaljwt.v1 import externaljwt_pb2 as v1
from kubeca_client._proto.externaljwt.v1alpha1 import externaljwt_pb2 as v1alpha1

F = FieldDescriptor
# message -> [(field name, number, type, repeated, message type or "")]
FIELDS = {
    "SignJWTRequest": [("claims", 1, F.TYPE_STRING, False, "")],
    "SignJWTResponse": [
        ("header", 1, F.TYPE_STRING, False, ""),
        ("signature", 2, F.TYPE_STRING, False, ""),
    ],
    "FetchKeysRequest": [],
    "FetchKeysResponse": [
        ("keys", 1, F.TYPE_MESSAGE, True, "{package}.Key"),
        ("data_timestamp", 2, F.TYPE_MESSAGE, False, "google.protobuf.Timestamp"),
        ("refresh_hint_seconds", 3, F.TYPE_INT64, False, ""),
    ],
    "Key": [
        ("key_id", 1, F.TYPE_STRING, False, ""),
        ("key", 2, F.TYPE_BYTES, False, ""),
        ("exclude_from_oidc_discovery", 3, F.TYPE_BOOL, False, ""),
    ],
    "MetadataRequest": [],
    "MetadataResponse": [("max_token_expiration_seconds", 1, F.TYPE_INT64, False, "")],
}
METHODS = {
    "Sign": ("SignJWTRequest", "SignJWTResponse"),
    "FetchKeys": ("FetchKeysRequest", "FetchKeysResponse"),
    "Metadata": ("MetadataRequest", "MetadataResponse"),
}

PACKAGES = pytest.mark.parametrize(("module", "package"), [(v1, "v1"), (v1alpha1, "v1alpha1")])


@PACKAGES
def test_the_service_and_its_full_method_names(module: ModuleType, package: str) -> None:
    assert module.DESCRIPTOR.package == package
    service = module.DESCRIPTOR.services_by_name["ExternalJWTSigner"]
    assert service.full_name == f"{package}.ExternalJWTSigner"
    found = {
        f"/{service.full_name}/{m.name}": (m.input_type.full_name, m.output_type.full_name)
        for m in service.methods
    }
    assert found == {
        f"/{package}.ExternalJWTSigner/{name}": (f"{package}.{req}", f"{package}.{resp}")
        for name, (req, resp) in METHODS.items()
    }
    assert not any(m.client_streaming or m.server_streaming for m in service.methods)


@PACKAGES
def test_every_message_field_name_number_and_type(module: ModuleType, package: str) -> None:
    assert set(module.DESCRIPTOR.message_types_by_name) == set(FIELDS)
    for message, expected in FIELDS.items():
        descriptor = module.DESCRIPTOR.message_types_by_name[message]
        assert descriptor.full_name == f"{package}.{message}"
        actual = [
            (
                f.name,
                f.number,
                f.type,
                f.is_repeated,
                f.message_type.full_name if f.message_type else "",
            )
            for f in descriptor.fields
        ]
        assert actual == [
            (n, num, t, rep, m.format(package=package)) for n, num, t, rep, m in expected
        ], message
