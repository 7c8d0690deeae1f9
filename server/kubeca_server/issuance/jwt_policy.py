"""What the service-account key signs: claims held to Kubernetes' own shape.

kube-apiserver sends the JWT payload already base64url-encoded, and the signature is
over exactly those characters, so they are signed as given; but they are decoded first
and refused (InvalidArgument, naming the rule) unless they are what kube-apiserver
makes: an issuer of this cluster, a ``system:serviceaccount:<namespace>:<name>``
subject, an expiry no further out than the configured maximum, no issue or not-before
time in the future, and a ``kubernetes.io`` object (if any) about that same service
account and the pod, secret or node it is bound to. Whoever can reach the signer can
mint any identity the claims name; this keeps what reaches the HSM to tokens
kube-apiserver could have asked for.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kubeca_client.errors import InvalidArgument
from kubeca_client.text import clip

# Real claims are a few hundred bytes; a bound token with long names stays under 4 KiB.
MAX_CLAIMS_CHARS = 16 * 1024
# How far a clock may disagree with kube-apiserver's.
CLOCK_SKEW = timedelta(seconds=60)
MAX_AUDIENCES = 16
MAX_TEXT = 1024

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"  # DNS-1123 label: namespaces
_SUBDOMAIN = rf"{_LABEL}(\.{_LABEL})*"  # DNS-1123 subdomain: service-account names
_SUBJECT = re.compile(rf"system:serviceaccount:(?P<ns>{_LABEL}):(?P<name>{_SUBDOMAIN})")
_BINDINGS = ("pod", "secret", "node")
_KUBERNETES_KEYS = {"namespace", "serviceaccount", *_BINDINGS, "warnafter"}


@dataclass(frozen=True)
class TokenClaims:
    """What the audit record of a signature shows: bounded values, decoded once."""

    issuer: str
    subject: str
    audiences: tuple[str, ...]
    expires: int
    issued_at: int | None
    jti: str
    bound_to: str  # "pod:<name>", "secret:<name>", "node:<name>", or ""

    def fields(self) -> dict[str, Any]:
        return {
            "iss": clip(self.issuer, 256),
            "sub": clip(self.subject, 320),
            "aud": [clip(a, 256) for a in self.audiences],
            "exp": self.expires,
            "iat": self.issued_at,
            "jti": clip(self.jti, 128),
            "bound_to": clip(self.bound_to, 300),
        }


def _refuse(why: str) -> InvalidArgument:
    return InvalidArgument(f"claims refused: {why}")


def decode_claims(claims: str) -> Mapping[str, Any]:
    """The JSON object ``claims`` encodes (unpadded base64url), or InvalidArgument."""
    if len(claims) > MAX_CLAIMS_CHARS:
        raise _refuse(f"{len(claims)} characters, more than the {MAX_CLAIMS_CHARS} allowed")
    if not claims or not _B64URL.fullmatch(claims) or len(claims) % 4 == 1:
        raise _refuse("not unpadded base64url")
    try:
        raw = base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4))
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise _refuse(f"not base64url of a JSON object ({clip(str(exc), 120)})") from None
    if not isinstance(value, dict):
        raise _refuse("the JSON is not an object")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two values for one claim would mean different things to different verifiers.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"claim {clip(key, 64)!r} appears twice")
        result[key] = value
    return result


def _text(claims: Mapping[str, Any], name: str, *, required: bool) -> str:
    value = claims.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT:
        raise _refuse(f"{name} must be a non-empty string of at most {MAX_TEXT} characters")
    return value


def _time(claims: Mapping[str, Any], name: str) -> int | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 2**40:
        raise _refuse(f"{name} must be a NumericDate (seconds since 1970)")
    return int(value)


def _audiences(claims: Mapping[str, Any]) -> tuple[str, ...]:
    value = claims.get("aud")
    values = [value] if isinstance(value, str) else value
    if (
        not isinstance(values, list)
        or not 0 < len(values) <= MAX_AUDIENCES
        or not all(isinstance(a, str) and 0 < len(a) <= MAX_TEXT for a in values)
    ):
        raise _refuse(f"aud must be a string or a list of 1 to {MAX_AUDIENCES} strings")
    return tuple(values)


def _binding(kubernetes: Any, namespace: str, name: str) -> str:
    """Check the ``kubernetes.io`` object against the subject; what it binds to."""
    if kubernetes is None:
        return ""
    if not isinstance(kubernetes, dict) or set(kubernetes) - _KUBERNETES_KEYS:
        raise _refuse(
            "kubernetes.io must be an object with only " + ", ".join(sorted(_KUBERNETES_KEYS))
        )
    if kubernetes.get("namespace") != namespace:
        raise _refuse("kubernetes.io.namespace is not the subject's namespace")
    account = kubernetes.get("serviceaccount")
    if not isinstance(account, dict) or account.get("name") != name:
        raise _refuse("kubernetes.io.serviceaccount.name is not the subject's name")
    bound = []
    for kind in ("serviceaccount", *_BINDINGS):
        ref = kubernetes.get(kind)
        if ref is None:
            continue
        if (
            not isinstance(ref, dict)
            or set(ref) - {"name", "uid"}
            or not all(isinstance(v, str) and 0 < len(v) <= 253 for v in ref.values())
            or "name" not in ref
        ):
            raise _refuse(f"kubernetes.io.{kind} must be an object of name and uid strings")
        if kind != "serviceaccount":
            bound.append(f"{kind}:{ref['name']}")
    return ",".join(bound)


@dataclass(frozen=True)
class ClaimsPolicy:
    issuers: frozenset[str]
    max_expiration: timedelta
    clock: Callable[[], datetime]

    def check(self, claims: str) -> TokenClaims:
        """The decoded claims if the key may sign them; InvalidArgument naming the rule
        otherwise."""
        values = decode_claims(claims)
        now = self.clock().timestamp()
        skew = CLOCK_SKEW.total_seconds()
        issuer = _text(values, "iss", required=True)
        if issuer not in self.issuers:
            raise _refuse(f"iss {clip(issuer, 128)!r} is not an issuer of this cluster")
        subject = _text(values, "sub", required=True)
        match = _SUBJECT.fullmatch(subject)
        if match is None or len(match["name"]) > 253:
            raise _refuse(
                f"sub {clip(subject, 128)!r} is not system:serviceaccount:<namespace>:<name>"
            )
        expires = _time(values, "exp")
        if expires is None:
            raise _refuse("exp is missing: kubeca signs no token that never expires")
        if expires <= now - skew:
            raise _refuse("exp is in the past")
        limit = self.max_expiration.total_seconds()
        if expires - now > limit + skew:
            raise _refuse(f"exp is more than {int(limit)} seconds from now")
        for name in ("iat", "nbf"):
            moment = _time(values, name)
            if moment is not None and moment > now + skew:
                raise _refuse(f"{name} is in the future")
        return TokenClaims(
            issuer=issuer,
            subject=subject,
            audiences=_audiences(values),
            expires=expires,
            issued_at=_time(values, "iat"),
            jti=_text(values, "jti", required=False),
            bound_to=_binding(values.get("kubernetes.io"), match["ns"], match["name"]),
        )
