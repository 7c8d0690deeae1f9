"""api/caller.py: who is calling, from the verified client certificate (or a token).

What a client certificate says is read once per certificate; a certificate not made for
clients is refused every time it is shown, never remembered as an operator.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kubeca_client.errors import Unauthenticated
from kubeca_server.api import caller as caller_module
from kubeca_server.api.caller import tls_caller
from kubeca_server.issuance.model import ANONYMOUS, OPERATOR, TOKEN


class Context:
    """What tls_caller reads of a gRPC servicer context."""

    def __init__(self, pem: bytes | None = None, metadata: tuple[Any, ...] = ()) -> None:
        self._pem = pem
        self._metadata = metadata

    def peer(self) -> str:
        return "ipv4:127.0.0.1:5000"

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [self._pem]} if self._pem else {}

    def invocation_metadata(self) -> tuple[Any, ...]:
        return self._metadata


def certificate(name: str, usage: x509.ObjectIdentifier, serial: int) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    built = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return built.public_bytes(Encoding.PEM)


def test_an_operator_is_named_by_its_certificate_each_call() -> None:
    alice = certificate("alice", ExtendedKeyUsageOID.CLIENT_AUTH, 0xA1)
    bob = certificate("bob", ExtendedKeyUsageOID.CLIENT_AUTH, 0xB2)
    for _ in range(3):
        got = [tls_caller(Context(pem)) for pem in (alice, bob)]  # type: ignore[arg-type]
        assert [(c.identity, c.serial, c.kind) for c in got] == [
            ("alice", "a1", OPERATOR),
            ("bob", "b2", OPERATOR),
        ]
        assert {c.peer for c in got} == {"ipv4:127.0.0.1:5000"}


def test_a_certificate_not_made_for_clients_is_refused_every_time() -> None:
    server_only = certificate("web", ExtendedKeyUsageOID.SERVER_AUTH, 7)
    for _ in range(2):
        with pytest.raises(Unauthenticated, match="not an operator certificate"):
            tls_caller(Context(server_only))  # type: ignore[arg-type]
    assert server_only not in caller_module._known


def test_what_is_remembered_is_bounded() -> None:
    caller_module._known.clear()
    pems = [
        certificate(f"op{n}", ExtendedKeyUsageOID.CLIENT_AUTH, n + 1)
        for n in range(caller_module.MAX_KNOWN_CERTIFICATES + 5)
    ]
    for n, pem in enumerate(pems):
        assert tls_caller(Context(pem)).identity == f"op{n}"  # type: ignore[arg-type]
        assert len(caller_module._known) <= caller_module.MAX_KNOWN_CERTIFICATES


def test_without_a_certificate_a_bearer_token_or_nobody() -> None:
    token = tls_caller(Context(None, (("authorization", "Bearer abcdef.secret"),)))  # type: ignore[arg-type]
    assert (token.kind, token.identity) == (TOKEN, "token:abcdef")
    assert tls_caller(Context(None)).kind == ANONYMOUS  # type: ignore[arg-type]
