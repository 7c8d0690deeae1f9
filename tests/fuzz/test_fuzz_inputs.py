"""Issue 10, "keep the campaign": every entry point that reads untrusted bytes, fuzzed.

Each test names its entry point and asserts the only answers it may give: a value, or a
refusal from the error taxonomy with a bounded message; never anything that would reach
the caller as INTERNAL. Together they run over 10,000 cases at KUBECA_FUZZ_SCALE=1.
"""

from __future__ import annotations

import io
import ipaddress
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from google.protobuf.message import Message
from hypothesis import given
from hypothesis import strategies as st
from kubeca_client import terraform
from kubeca_client._proto.kubeca.v1 import kubeca_pb2 as pb
from kubeca_client.config import load_client_config
from kubeca_client.errors import InvalidArgument, KubecaError
from kubeca_server.api.methods import MAX_STATUS_MESSAGE, Method, _decode, status_message
from kubeca_server.csr import leaf_public_key, parse_csr, requested_sans
from kubeca_server.issuance import tokens
from kubeca_server.profiles import PROFILES, Issuer, build_leaf, parse_inputs
from kubeca_server.store.memory import MemoryStore

from tests.fuzz.policy import violations
from tests.fuzz.strategies import examples, parameters
from tests.unit.helpers import make_csr, p256_key, subject

BASE_CSRS = [
    make_csr(der=True),
    make_csr(name=subject("kubernetes-admin", "kubeadm:cluster-admins"), der=True),
    make_csr(
        sans=[x509.DNSName("node-1"), x509.IPAddress(ipaddress.ip_address("10.0.0.1"))], der=True
    ),
]


def _refused_cleanly(exc: KubecaError) -> None:
    assert exc.status != "INTERNAL", exc.message
    assert len(status_message(exc.message)) <= MAX_STATUS_MESSAGE


@examples(2500)
@given(
    base=st.sampled_from(BASE_CSRS),
    edits=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), min_size=1, max_size=4),
    cut=st.one_of(st.none(), st.integers(0, 600)),
    pem=st.booleans(),
)
def test_parse_csr_on_mutated_csrs(
    base: bytes, edits: list[tuple[int, int]], cut: int | None, pem: bool
) -> None:
    data = bytearray(base)
    for index, value in edits:
        data[index % len(data)] = value
    if cut is not None:
        data = data[:cut]
    raw = bytes(data)
    if pem:
        import base64

        raw = b"-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(raw)
        raw += b"-----END CERTIFICATE REQUEST-----\n"
    try:
        csr = parse_csr(raw)
        leaf_public_key(csr)
        requested_sans(csr)
    except KubecaError as exc:
        _refused_cleanly(exc)


@examples(1000)
@given(st.binary(max_size=3000))
def test_parse_csr_on_arbitrary_bytes(raw: bytes) -> None:
    try:
        parse_csr(raw)
    except KubecaError as exc:
        _refused_cleanly(exc)


KEY = p256_key()
ISSUER_KEY = p256_key()
ISSUERS = {
    "kubernetes-ca": "kubernetes",
    "etcd-ca": "etcd-ca",
    "front-proxy-ca": "front-proxy-ca",
}


def _issuer(authority: str) -> Issuer:
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, ISSUERS[authority])])
    return Issuer(name, b"\x01" * 20, datetime.now(UTC) + timedelta(days=3650))


@examples(3000)
@given(profile=st.sampled_from(sorted(PROFILES)), values=parameters())
def test_parameters_are_refused_or_give_a_certificate_within_policy(
    profile: str, values: dict[str, str]
) -> None:
    chosen = PROFILES[profile]
    try:
        inputs = parse_inputs(chosen, values)
        builder = build_leaf(
            chosen,
            inputs,
            KEY.public_key(),
            _issuer(chosen.authority),
            12345,
            datetime.now(UTC),
            timedelta(days=30),
        )
    except KubecaError as exc:
        _refused_cleanly(exc)
        return
    certificate = builder.sign(ISSUER_KEY, hashes.SHA256())
    assert violations(profile, certificate, inputs.node_name or "") == []


REQUEST_TYPES: list[type[Message]] = [
    pb.IssueCertificateRequest,
    pb.GetCACertificatesRequest,
    pb.ListProfilesRequest,
    pb.RevokeCertificateRequest,
    pb.ListCertificatesRequest,
    pb.CreateBootstrapTokenRequest,
    pb.GetCRLRequest,
]


def _method(request_type: type[Message]) -> Method[Message, Message]:
    return Method("Fuzz", request_type, request_type, lambda request, caller: request)


@examples(1500)
@given(request_type=st.sampled_from(REQUEST_TYPES), raw=st.binary(max_size=512))
def test_protobuf_decoding_of_arbitrary_bytes(request_type: type[Message], raw: bytes) -> None:
    try:
        decoded = _decode(_method(request_type), raw)
    except InvalidArgument as exc:
        _refused_cleanly(exc)
        return
    assert isinstance(decoded, request_type)


@examples(600)
@given(
    raw=st.one_of(
        st.binary(max_size=256),
        st.dictionaries(
            st.sampled_from([*terraform.QUERY_KEYS, "param_node_name", "bogus"]),
            st.one_of(st.text(max_size=30), st.integers(), st.none(), st.lists(st.text())),
            max_size=6,
        ).map(lambda d: json.dumps(d).encode()),
    )
)
def test_terraform_query_on_stdin(raw: bytes, tmp_path_factory: pytest.TempPathFactory) -> None:
    # Everything up to the network call: the query, its parameters, timeout and config.
    try:
        query = terraform._query(io.BytesIO(raw))
        terraform._parameters(query)
        terraform._config(query, terraform._timeout(query))
    except KubecaError as exc:
        _refused_cleanly(exc)


@examples(600)
@given(text=st.one_of(st.text(max_size=300), st.binary(max_size=300)))
def test_client_config_file(text: str | bytes, tmp_path_factory: pytest.TempPathFactory) -> None:
    path: Path = tmp_path_factory.mktemp("config") / "kubeca.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_client_config(path)
    except KubecaError as exc:
        _refused_cleanly(exc)


STORE = MemoryStore()


@examples(1000)
@given(
    token=st.one_of(
        st.text(max_size=40),
        st.from_regex(r"[a-z0-9]{6}\.[a-z0-9]{16}", fullmatch=True),
        st.from_regex(r"[A-Za-z0-9.\x00-\x1f]{0,30}", fullmatch=True),
    )
)
def test_bootstrap_token_authentication(token: str) -> None:
    with pytest.raises(KubecaError) as refused:
        tokens.authenticate(STORE, token, datetime.now(UTC))
    _refused_cleanly(refused.value)
    assert refused.value.status in {"UNAUTHENTICATED", "INVALID_ARGUMENT"}
