"""Service-account tokens on the in-memory backend: the claims policy refuses what
kube-apiserver would never send, what is signed verifies with PyJWT against the keys
FetchKeys publishes, rotation keeps old tokens valid while their key is published,
and every signature is in the ledger."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.serialization import load_der_public_key
from kubeca_client.authorities import SERVICE_ACCOUNT_KEY
from kubeca_client.errors import InvalidArgument, PermissionDenied
from kubeca_client.keys import KeyAlgorithm
from kubeca_server.ca import signing_key
from kubeca_server.ca.signing_key import KeyRing
from kubeca_server.issuance.jwt_policy import MAX_CLAIMS_CHARS, ClaimsPolicy
from kubeca_server.issuance.jwt_signer import SIGNED_EVENT, TokenSigner
from kubeca_server.issuance.model import ANONYMOUS, LOCAL, OPERATOR, Caller
from kubeca_server.keys.memory import MemoryBackend
from kubeca_server.ledger.audit import Ledger
from kubeca_server.ledger.mirror import Mirror
from kubeca_server.store.changes import SetGenerationStates
from kubeca_server.store.memory import MemoryStore
from kubeca_server.store.records import GenerationState

from tests.unit.conftest import Clock, grant

ISSUER = "https://kubernetes.default.svc.cluster.local"
NOW = datetime(2026, 6, 1, tzinfo=UTC)
LOCAL_CALLER = Caller("local:unix:", "unix:", LOCAL)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**changes: Any) -> dict[str, Any]:
    now = int(NOW.timestamp())
    values: dict[str, Any] = {
        "aud": ["https://kubernetes.default.svc.cluster.local"],
        "exp": now + 3600,
        "iat": now,
        "nbf": now,
        "iss": ISSUER,
        "jti": "7d0c3f3e-1b4e-4d7b-9b1f-3a2c1d0e9f8a",
        "sub": "system:serviceaccount:kube-system:coredns",
        "kubernetes.io": {
            "namespace": "kube-system",
            "serviceaccount": {"name": "coredns", "uid": "0b8e-uid"},
            "pod": {"name": "coredns-abc", "uid": "pod-uid"},
            "node": {"name": "cp-1", "uid": "node-uid"},
        },
    }
    for key, value in changes.items():
        if value is None:
            values.pop(key, None)
        else:
            values[key] = value
    return values


def encode(values: dict[str, Any]) -> str:
    return b64(json.dumps(values).encode())


class Signer:
    def __init__(self, tmp_path: Path, algorithm: KeyAlgorithm) -> None:
        self.clock = Clock(NOW)
        self.backend = MemoryBackend()
        self.store = MemoryStore()
        self.ledger = Ledger(self.store, Mirror(tmp_path / "audit.log"), self.clock)
        signing_key.initialize(self.backend, self.ledger, algorithm, NOW)
        self.ring = KeyRing(self.backend, self.store, self.clock, recheck_seconds=0)
        self.tokens = TokenSigner(
            self.ring,
            ClaimsPolicy(frozenset({ISSUER}), timedelta(hours=24), self.clock),
            self.ledger,
            {"proxy": grant("proxy", service_account_signing=True), "plain": grant("plain")},
            timedelta(hours=24),
            60,
        )

    def token(self, values: dict[str, Any] | None = None) -> str:
        payload = encode(values or claims())
        signed = self.tokens.sign(payload, LOCAL_CALLER)
        return f"{signed.header}.{payload}.{signed.signature}"

    def published(self) -> dict[str, Any]:
        return {k.kid: load_der_public_key(k.public_der) for k in self.tokens.keys().published}

    def records(self, event: str) -> list[dict[str, Any]]:
        with self.store.unit(read_only=True) as unit:
            rows = unit.audit.rows(0, 10000)
        return [f for f in (r.fields() for r in rows) if f.get("event") == event]


def verify(token: str, keys: dict[str, Any], alg: str) -> dict[str, Any]:
    kid = jwt.get_unverified_header(token)["kid"]
    if kid not in keys:
        raise jwt.InvalidTokenError(f"kid {kid} is not published")
    decoded: dict[str, Any] = jwt.decode(
        token,
        keys[kid],
        algorithms=[alg],
        audience="https://kubernetes.default.svc.cluster.local",
        issuer=ISSUER,
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )
    return decoded


@pytest.mark.parametrize(
    ("algorithm", "alg"), [(KeyAlgorithm.RSA_2048, "RS256"), (KeyAlgorithm.ECDSA_P256, "ES256")]
)
def test_a_signed_token_verifies_with_pyjwt_and_its_header_is_only_alg_kid_typ(
    tmp_path: Path, algorithm: KeyAlgorithm, alg: str
) -> None:
    signer = Signer(tmp_path, algorithm)
    token = signer.token()
    header_b64, payload, _ = token.split(".")
    header = json.loads(base64.urlsafe_b64decode(header_b64 + "=" * (-len(header_b64) % 4)))
    key = signer.tokens.keys().current
    assert header == {"alg": alg, "kid": key.kid, "typ": "JWT"}
    assert payload == encode(claims())  # signed exactly as sent
    assert (
        verify(token, signer.published(), alg)["sub"] == "system:serviceaccount:kube-system:coredns"
    )


def test_the_kid_is_kube_apiservers_own_for_the_public_key(tmp_path: Path) -> None:
    import hashlib

    signer = Signer(tmp_path, KeyAlgorithm.RSA_2048)
    key = signer.tokens.keys().current
    assert key.kid == b64(hashlib.sha256(key.public_der).digest())


def test_every_signature_is_recorded_with_what_it_signed(tmp_path: Path) -> None:
    signer = Signer(tmp_path, KeyAlgorithm.ECDSA_P256)
    signer.token()
    [record] = signer.records(SIGNED_EVENT)
    assert record["sub"] == "system:serviceaccount:kube-system:coredns"
    assert record["aud"] == ["https://kubernetes.default.svc.cluster.local"]
    assert record["jti"] == claims()["jti"]
    assert record["exp"] == claims()["exp"]
    assert record["kid"] == signer.tokens.keys().current.kid
    assert record["bound_to"] == "pod:coredns-abc,node:cp-1"


def test_rotation_keeps_published_keys_valid_and_unpublished_ones_not(tmp_path: Path) -> None:
    signer = Signer(tmp_path, KeyAlgorithm.RSA_2048)
    old_token = signer.token()
    # The rotation steps as issue 12's verbs take them: a new generation, published
    # first; then it issues and the old one stays trusted; then the old one retires.
    signing_key.add_generation(
        signer.backend,
        signer.ledger,
        KeyAlgorithm.RSA_2048,
        2,
        GenerationState.TRUSTED,
        NOW,
        "rotation",
    )
    assert len(signer.published()) == 2
    from kubeca_server.ledger.audit import Entry

    signer.ledger.commit(
        Entry(
            "ca.rotated",
            {},
            change=SetGenerationStates(
                SERVICE_ACCOUNT_KEY,
                ((1, GenerationState.TRUSTED), (2, GenerationState.ISSUING)),
                NOW,
            ),
        )
    )
    new_token = signer.token()
    assert (
        jwt.get_unverified_header(new_token)["kid"] != jwt.get_unverified_header(old_token)["kid"]
    )
    published = signer.published()
    assert verify(old_token, published, "RS256")  # retired from signing, still published
    assert verify(new_token, published, "RS256")
    signer.ledger.commit(
        Entry(
            "ca.rotated",
            {},
            change=SetGenerationStates(SERVICE_ACCOUNT_KEY, ((1, GenerationState.RETIRED),), NOW),
        )
    )
    published = signer.published()
    assert len(published) == 1
    with pytest.raises(jwt.InvalidTokenError):
        verify(old_token, published, "RS256")
    assert verify(new_token, published, "RS256")


BAD_CLAIMS = {
    "iss of another cluster": encode(claims(iss="https://evil.example")),
    "no iss": encode(claims(iss=None)),
    "exp beyond the maximum": encode(claims(exp=int(NOW.timestamp()) + 25 * 3600)),
    "no exp": encode(claims(exp=None)),
    "exp in the past": encode(claims(exp=int(NOW.timestamp()) - 3600)),
    "exp not a number": encode(claims(exp="tomorrow")),
    "exp a boolean": encode(claims(exp=True)),
    "iat in the future": encode(claims(iat=int(NOW.timestamp()) + 3600)),
    "nbf in the future": encode(claims(nbf=int(NOW.timestamp()) + 3600)),
    "sub not a service account": encode(claims(sub="system:admin")),
    "sub of a user": encode(claims(sub="kubernetes-admin")),
    "sub namespace not a DNS label": encode(claims(sub="system:serviceaccount:Kube_System:x")),
    "sub with an extra part": encode(claims(sub="system:serviceaccount:a:b:c")),
    "kubernetes.io for another namespace": encode(
        claims(**{"kubernetes.io": {"namespace": "default", "serviceaccount": {"name": "coredns"}}})
    ),
    "kubernetes.io for another account": encode(
        claims(**{"kubernetes.io": {"namespace": "kube-system", "serviceaccount": {"name": "x"}}})
    ),
    "no aud": encode(claims(aud=None)),
    "aud not strings": encode(claims(aud=[1, 2])),
    "not base64url": "not*base64url!",
    "padded base64": encode(claims()) + "==",
    "base64 of text, not JSON": b64(b"hello there"),
    "JSON but not an object": b64(b"[1, 2, 3]"),
    "not UTF-8": b64(b"\xff\xfe{}"),
    "a duplicated claim": b64(b'{"iss": "x", "iss": "' + ISSUER.encode() + b'"}'),
    "empty": "",
    "oversized": "A" * (MAX_CLAIMS_CHARS + 1),
}


@pytest.mark.parametrize("case", sorted(BAD_CLAIMS))
def test_bad_claims_are_refused_as_invalid_argument_and_nothing_is_signed(
    tmp_path: Path, case: str
) -> None:
    signer = Signer(tmp_path, KeyAlgorithm.ECDSA_P256)
    with pytest.raises(InvalidArgument, match="claims refused"):
        signer.tokens.sign(BAD_CLAIMS[case], LOCAL_CALLER)
    assert signer.records(SIGNED_EVENT) == []


@pytest.mark.parametrize(
    ("caller", "allowed"),
    [
        (Caller("proxy", "ipv4:10.0.0.1:1", OPERATOR), True),
        (Caller("plain", "ipv4:10.0.0.1:1", OPERATOR), False),
        (Caller("stranger", "ipv4:10.0.0.1:1", OPERATOR), False),
        (Caller("anonymous", "ipv4:10.0.0.1:1", ANONYMOUS), False),
        (LOCAL_CALLER, True),
    ],
)
def test_over_tls_only_a_grant_with_service_account_signing_may_sign(
    tmp_path: Path, caller: Caller, allowed: bool
) -> None:
    signer = Signer(tmp_path, KeyAlgorithm.ECDSA_P256)
    if allowed:
        assert signer.tokens.sign(encode(claims()), caller).signature
    else:
        with pytest.raises(PermissionDenied, match="service_account_signing"):
            signer.tokens.sign(encode(claims()), caller)


def test_init_adopts_a_key_already_under_its_label_and_never_replaces_it(tmp_path: Path) -> None:
    first = Signer(tmp_path, KeyAlgorithm.RSA_2048)
    kid = first.tokens.keys().current.kid
    # A fresh store over the same token (several stores sharing one test token).
    store = MemoryStore()
    ledger = Ledger(store, Mirror(tmp_path / "second.log"), first.clock)
    line = signing_key.initialize(first.backend, ledger, KeyAlgorithm.RSA_2048, NOW)
    assert "adopted" in line
    assert KeyRing(first.backend, store, first.clock).keys().current.kid == kid
    again = signing_key.initialize(first.backend, ledger, KeyAlgorithm.ECDSA_P256, NOW)
    assert "nothing changed" in again and "init never replaces a key" in again
