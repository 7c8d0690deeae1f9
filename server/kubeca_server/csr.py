"""The untrusted CSR: parsed, its signature checked, its key held to policy.

A CSR gives kubeca a public key and proof that the caller holds the private key.
Its subject and SANs are claims to compare with what the profile computes, never
copied; its other extensions are ignored.
"""

from __future__ import annotations

import ipaddress

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from kubeca_client.errors import InvalidArgument
from kubeca_client.names import SubjectAltNames
from kubeca_client.text import excerpt

from kubeca_server.profiles import LeafPublicKey

MAX_CSR_BYTES = 16 * 1024
# Everything cryptography may raise while reading bytes it was handed: x509.InvalidVersion
# (a version field that is not 0) is neither a ValueError nor a TypeError, and a new
# release may add more; reading untrusted bytes must never become INTERNAL.
UNREADABLE = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    x509.InvalidVersion,
    x509.UnsupportedGeneralNameType,
    x509.DuplicateExtension,
    OverflowError,
    IndexError,
    KeyError,
)
RSA_MIN_BITS = 2048
RSA_MAX_BITS = 8192
ALLOWED_CURVES = ("secp256r1", "secp384r1")


def parse_csr(data: bytes) -> x509.CertificateSigningRequest:
    if not data:
        raise InvalidArgument("csr is empty: send a PKCS#10 request in PEM or DER")
    if len(data) > MAX_CSR_BYTES:
        raise InvalidArgument(f"csr is {len(data)} bytes; at most {MAX_CSR_BYTES} are accepted")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            csr = x509.load_pem_x509_csr(data.strip())
        else:
            csr = x509.load_der_x509_csr(data)
    except x509.InvalidVersion:
        raise InvalidArgument(
            "csr has a version field other than 0 (v1), the only PKCS#10 version"
        ) from None
    except UNREADABLE:
        raise InvalidArgument("csr is not a PKCS#10 certificate request in PEM or DER") from None
    try:
        valid = csr.is_signature_valid
    except UNREADABLE:
        valid = False
    if not valid:
        raise InvalidArgument(
            "csr signature does not verify: it must be signed by the key it carries"
        )
    try:
        # Decoded now, so a subject that is not valid UTF-8 (or otherwise broken) is
        # refused here instead of surfacing later as an internal error.
        csr.subject.rfc4514_string()
    except UNREADABLE as exc:
        raise InvalidArgument(f"csr subject cannot be decoded ({excerpt(str(exc))})") from None
    return csr


def leaf_public_key(csr: x509.CertificateSigningRequest) -> LeafPublicKey:
    """The CSR's key, if it meets the leaf key policy: RSA 2048-8192 or P-256/P-384."""
    try:
        key = csr.public_key()
    except UNREADABLE as exc:
        raise InvalidArgument(f"csr public key cannot be read: {excerpt(str(exc))}") from None
    if isinstance(key, rsa.RSAPublicKey):
        if not RSA_MIN_BITS <= key.key_size <= RSA_MAX_BITS:
            raise InvalidArgument(
                f"RSA key of {key.key_size} bits refused: use {RSA_MIN_BITS} to {RSA_MAX_BITS} bits"
            )
        if key.public_numbers().e < 65537:
            raise InvalidArgument("RSA key refused: public exponent must be at least 65537")
        return key
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ALLOWED_CURVES:
            raise InvalidArgument(f"EC key on curve {key.curve.name} refused: use P-256 or P-384")
        return key
    raise InvalidArgument(
        f"{type(key).__name__.removeprefix('_')} keys are refused: use RSA (2048-8192) or "
        "ECDSA P-256/P-384"
    )


def check_requested_subject(csr: x509.CertificateSigningRequest, expected: x509.Name) -> None:
    """An empty subject lets the profile decide; a non-empty one must be exactly it."""
    requested = csr.subject
    if len(requested) == 0:
        return
    want = sorted((a.oid.dotted_string, str(a.value)) for a in expected)
    got = sorted((a.oid.dotted_string, str(a.value)) for a in requested)
    if want != got:
        raise InvalidArgument(
            f"csr subject {excerpt(requested.rfc4514_string())} does not match what this "
            f"profile issues, {excerpt(expected.rfc4514_string())}; send an empty subject or "
            "exactly that one"
        )


def requested_sans(csr: x509.CertificateSigningRequest) -> SubjectAltNames | None:
    """The SANs the CSR asks for, or None if it asks for none."""
    try:
        extension = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    except UNREADABLE as exc:
        raise InvalidArgument(f"csr extensions cannot be parsed: {excerpt(str(exc))}") from None
    dns: list[str] = []
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for name in extension.value:
        if isinstance(name, x509.DNSName):
            dns.append(name.value)
        elif isinstance(name, x509.IPAddress) and not isinstance(
            name.value, ipaddress.IPv4Network | ipaddress.IPv6Network
        ):
            ips.append(name.value)
        else:
            raise InvalidArgument(
                f"csr asks for a {type(name).__name__} SAN; kubeca issues DNS and IP SANs only"
            )
    return SubjectAltNames.of(dns, ips)


def check_requested_sans(csr: x509.CertificateSigningRequest, computed: SubjectAltNames) -> None:
    """Every SAN the CSR asks for must be one the profile computes from its parameters."""
    requested = requested_sans(csr)
    if requested is None:
        return
    extra_dns = sorted(set(requested.dns) - set(computed.dns))
    extra_ips = [str(ip) for ip in requested.ips if ip not in computed.ips]
    extra = extra_dns + extra_ips
    if extra:
        shown = ", ".join(excerpt(name, 64) for name in extra[:5])
        more = f" and {len(extra) - 5} more" if len(extra) > 5 else ""
        raise InvalidArgument(
            f"csr asks for SANs this profile would not issue with these parameters: "
            f"{shown}{more}; pass them in extra_sans if the profile takes it"
        )
