"""How the client comes to trust the service: a CA file, or a pinned CA hash.

Pinning works as `kubeadm join --discovery-token-ca-cert-hash` does: fetch the
server's certificate chain without trusting it, find the CA whose SubjectPublicKeyInfo
hashes to the pin, check that it signed the server's certificate, and from then on
trust only that CA (gRPC then verifies the server against it, hostname included).
"""

from __future__ import annotations

import _ssl
import re
import socket
import ssl
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding

from kubeca_client.errors import InvalidArgument, Unauthenticated, Unavailable
from kubeca_client.keys import spki_hash

PIN = re.compile(r"sha256:[0-9a-f]{64}")


def parse_pin(text: str, what: str = "--ca-cert-hash") -> str:
    pin = text.strip().lower()
    if not PIN.fullmatch(pin):
        raise InvalidArgument(f"{what} {text[:80]!r} is not sha256:<64 hex digits>")
    return pin


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise InvalidArgument(f"server address {address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _der_chain(tls: ssl.SSLSocket) -> list[bytes]:
    """The chain the peer sent, unverified, as DER.

    Public as SSLSocket.get_unverified_chain from Python 3.13; 3.10 to 3.12 have the
    same method on the private SSL object, returning certificate objects instead.
    """
    public: Any = getattr(tls, "get_unverified_chain", None)
    if public is not None:
        return [bytes(der) for der in public() or []]
    private: Any = getattr(tls, "_sslobj", None)
    chain = private.get_unverified_chain() if private is not None else None
    der_format = getattr(_ssl, "ENCODING_DER", 2)
    return [certificate.public_bytes(der_format) for certificate in chain or []]


def _peer_chain(address: str, timeout: float) -> list[x509.Certificate]:
    host, port = _split(address)
    context = ssl.create_default_context()
    # Nothing is trusted yet: the chain is read only to be checked against the pin.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            return [x509.load_der_x509_certificate(der) for der in _der_chain(tls)]
    except (OSError, ssl.SSLError) as exc:
        raise Unavailable(f"kubeca service at {address} is unreachable: {exc}") from None


def pinned_ca(address: str, pin: str, timeout: float) -> bytes:
    """The PEM of the service CA whose key hashes to ``pin``, after checking it signed
    the server's certificate; a mismatch shows both hashes."""
    pin = parse_pin(pin)
    chain = _peer_chain(address, timeout)
    if not chain:
        raise Unauthenticated(f"kubeca service at {address} presented no certificate")
    leaf, *rest = chain
    for candidate in rest:
        if spki_hash(candidate) != pin:
            continue
        try:
            leaf.verify_directly_issued_by(candidate)
        except (InvalidSignature, ValueError, TypeError):
            break
        return candidate.public_bytes(Encoding.PEM)
    seen = ", ".join(spki_hash(c) for c in rest) or "none"
    raise Unauthenticated(
        f"the service CA does not match the pinned hash: expected {pin}, the server at "
        f"{address} presented {seen}"
    )
