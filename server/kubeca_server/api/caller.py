"""Who is calling, from what the connection proves."""

from __future__ import annotations

import threading

import grpc
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kubeca_client.errors import Unauthenticated

from kubeca_server.issuance.model import ANONYMOUS, LOCAL, OPERATOR, TOKEN, Caller

# Operators are few and each connection presents the same certificate on every call:
# what a certificate says is read once, not parsed again on every request (about a
# tenth of a millisecond each). Bounded, and emptied when full.
MAX_KNOWN_CERTIFICATES = 1024
_known: dict[bytes, tuple[str, str]] = {}
_known_lock = threading.Lock()


def _operator(pem: bytes) -> tuple[str, str]:
    """(common name, serial in hex) of a client certificate made for operators."""
    found = _known.get(pem)
    if found is not None:
        return found
    certificate = x509.load_pem_x509_certificate(pem)
    try:
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = x509.ExtendedKeyUsage([])
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usages or not names:
        raise Unauthenticated("the client certificate is not an operator certificate")
    found = (str(names[0].value), format(certificate.serial_number, "x"))
    with _known_lock:
        if len(_known) >= MAX_KNOWN_CERTIFICATES:
            _known.clear()
        _known[pem] = found
    return found


def tls_caller(context: grpc.ServicerContext) -> Caller:
    """An operator's verified client certificate, else a bootstrap token in the
    authorization metadata, else nobody.

    gRPC verified the certificate chain to the service CA during the handshake (the
    operator port requires it); the certificate must also be one made for clients.
    """
    peer = context.peer()
    # grpcio gives each auth property as a list of bytes (its stubs say bytes).
    pems: list[bytes] = list(context.auth_context().get("x509_pem_cert", []))  # type: ignore[arg-type]
    if pems:
        identity, serial = _operator(pems[0])
        return Caller(identity=identity, peer=peer, kind=OPERATOR, serial=serial)
    for key, value in context.invocation_metadata():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            token = value.removeprefix("Bearer ").strip()
            return Caller(f"token:{token.split('.')[0][:6]}", peer, TOKEN, token)
    return Caller(identity="anonymous", peer=peer, kind=ANONYMOUS)


def local_caller(context: grpc.ServicerContext) -> Caller:
    """A process on this host, through a unix socket whose file mode admits it."""
    peer = context.peer()
    return Caller(identity=f"local:{peer}", peer=peer, kind=LOCAL)
