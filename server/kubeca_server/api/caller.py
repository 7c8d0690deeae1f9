"""Who is calling, from what the connection proves."""

from __future__ import annotations

import grpc
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kubeca_client.errors import Unauthenticated

from kubeca_server.issuance.model import ANONYMOUS, LOCAL, OPERATOR, TOKEN, Caller


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
        certificate = x509.load_pem_x509_certificate(pems[0])
        try:
            usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            usages = x509.ExtendedKeyUsage([])
        names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if ExtendedKeyUsageOID.CLIENT_AUTH not in usages or not names:
            raise Unauthenticated("the client certificate is not an operator certificate")
        return Caller(
            identity=str(names[0].value),
            peer=peer,
            kind=OPERATOR,
            serial=format(certificate.serial_number, "x"),
        )
    for key, value in context.invocation_metadata():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            token = value.removeprefix("Bearer ").strip()
            return Caller(f"token:{token.split('.')[0][:6]}", peer, TOKEN, token)
    return Caller(identity="anonymous", peer=peer, kind=ANONYMOUS)


def local_caller(context: grpc.ServicerContext) -> Caller:
    """A process on this host, through a unix socket whose file mode admits it."""
    peer = context.peer()
    return Caller(identity=f"local:{peer}", peer=peer, kind=LOCAL)
