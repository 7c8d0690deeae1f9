"""The frozen values that pass between the stages of a decision."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from kubeca_client.text import clip

from kubeca_server.ca.authority import Generation
from kubeca_server.profiles import Profile

OPERATOR, TOKEN, ANONYMOUS, LOCAL = "operator", "token", "anonymous", "local"
MAX_PARAMETERS = 32


@dataclass(frozen=True)
class Caller:
    """Who asked, as the API layer established it from TLS, metadata or the socket."""

    identity: str  # an operator's certificate CN, "token:<id>", "unix:<uid>", or "anonymous"
    peer: str = ""
    kind: str = OPERATOR
    token: str = field(default="", repr=False)  # the bootstrap token secret; never logged
    serial: str = ""  # an operator's client certificate serial, lower-case hex

    def fields(self) -> dict[str, str]:
        """What every audit record says of the caller."""
        return {"caller": clip(self.identity, 128), "peer": clip(self.peer, 128)}


@dataclass(frozen=True)
class IssueRequest:
    profile: str
    csr: bytes
    parameters: Mapping[str, str] = field(default_factory=dict)
    lifetime: timedelta | None = None
    force_new: bool = False

    def fields(self) -> dict[str, Any]:
        """The request as its audit record shows it: bounded, whatever was sent."""
        return {
            "profile": clip(self.profile, 64),
            "parameters": {
                clip(k, 64): clip(v, 256) for k, v in list(self.parameters.items())[:MAX_PARAMETERS]
            },
            "lifetime_seconds": int(self.lifetime.total_seconds()) if self.lifetime else 0,
        }


@dataclass(frozen=True)
class IssuedCertificate:
    certificate: x509.Certificate
    generation: Generation  # the CA generation that signed it
    profile: Profile
    reused: bool = False

    @property
    def authority(self) -> str:
        return self.generation.authority

    # Cached: the record, the inventory row and the answer each ask (frozen dataclasses
    # allow it: cached_property writes the instance dict directly).
    @cached_property
    def certificate_pem(self) -> str:
        return self.certificate.public_bytes(Encoding.PEM).decode()

    @cached_property
    def serial_hex(self) -> str:
        return format(self.certificate.serial_number, "x")

    @cached_property
    def fingerprint_sha256(self) -> str:
        return self.certificate.fingerprint(hashes.SHA256()).hex()


@dataclass(frozen=True)
class ProfileView:
    profile: Profile
    enabled: bool
    default_lifetime: timedelta
    max_lifetime: timedelta
