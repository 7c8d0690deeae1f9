"""Revocation reasons: one parser for the CLI, the Terraform provider and the server's CRLs.

RFC 5280 §5.3.1 and openssl (`openssl ca -crl_reason`) spell the reasons in camel case
(keyCompromise, cACompromise, ...); kubeca has always stored and printed them in snake
case (key_compromise). Both spellings are accepted, in any letter case and with hyphens,
and every spelling becomes the one snake-case name that is stored, audited and mapped to
the CRL entry's reason code. grpc-free and cryptography-free, so the server imports it.
"""

from __future__ import annotations

from kubeca_client.errors import InvalidArgument

# The stored name, then its RFC 5280 spelling. removeFromCRL (delta CRLs only) and
# aACompromise (attribute certificates) have no meaning for the leaves kubeca issues.
REASONS: dict[str, str] = {
    "unspecified": "unspecified",
    "key_compromise": "keyCompromise",
    "ca_compromise": "cACompromise",
    "affiliation_changed": "affiliationChanged",
    "superseded": "superseded",
    "cessation_of_operation": "cessationOfOperation",
    "certificate_hold": "certificateHold",
    "privilege_withdrawn": "privilegeWithdrawn",
}


def _folded(text: str) -> str:
    # keyCompromise, key_compromise, Key-Compromise and KEYCOMPROMISE all fold alike.
    return "".join(char for char in text.lower() if char not in "_- ")


_BY_FOLDED = {_folded(name): name for name in REASONS}


def parse_reason(text: str) -> str:
    """The stored (snake-case) name of a revocation reason; empty means unspecified."""
    stripped = text.strip()
    if not stripped:
        return "unspecified"
    name = _BY_FOLDED.get(_folded(stripped))
    if name is None:
        known = ", ".join(f"{snake} ({camel})" for snake, camel in REASONS.items())
        raise InvalidArgument(
            f"unknown revocation reason {stripped[:40]!r}; use one of {known}, in any case"
        )
    return name


def help_text() -> str:
    """The reasons as --help shows them."""
    return ", ".join(REASONS.values())
