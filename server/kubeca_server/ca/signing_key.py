"""The service-account signing key: the fourth cluster key, in the HSM like the CAs.

It has no certificates, only public keys, but its generations live in the same store
role as the CAs' (``Generations``, kind ``jwt``, authority ``service-account``), so a
rotation is the same change of states: the one ``issuing`` generation signs new tokens,
``trusted`` ones stay published in FetchKeys until every token they signed has expired,
``retired`` ones are neither. The key id of each is kube-apiserver's own for a file key
(base64url SHA-256 of the public key's DER), so kids stay stable and familiar.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from kubeca_client.authorities import SERVICE_ACCOUNT_KEY
from kubeca_client.errors import ConfigError, InternalError, Unavailable
from kubeca_client.keys import KeyAlgorithm, algorithm_of, spki_der

from kubeca_server.ca.lifecycle import generation_rows, key_label
from kubeca_server.keys import CAPrivateKey, CAPublicKey, KeyBackend, sign_bytes, verify_signature
from kubeca_server.ledger.audit import Entry, Ledger
from kubeca_server.store.changes import AddGeneration
from kubeca_server.store.records import GenerationRow, GenerationState, KeyKind, Provenance
from kubeca_server.store.roles import Store

Clock = Callable[[], datetime]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def key_id(public: CAPublicKey) -> str:
    """kube-apiserver's kid for a key: unpadded base64url of SHA-256 of the SPKI DER."""
    return b64url(hashlib.sha256(spki_der(public)).digest())


def jws_algorithm(public: CAPublicKey) -> str:
    if isinstance(public, rsa.RSAPublicKey):
        return "RS256"
    if public.curve.name == "secp256r1":
        return "ES256"
    if public.curve.name == "secp384r1":
        return "ES384"
    raise ConfigError(f"{SERVICE_ACCOUNT_KEY}: a {public.curve.name} key cannot sign tokens")


@dataclass(frozen=True)
class SigningKey:
    """One generation of the key: its HSM key, state, kid and JWS algorithm."""

    generation: int
    state: GenerationState
    _key: CAPrivateKey

    @property
    def public_key(self) -> CAPublicKey:
        return self._key.public_key()

    @property
    def public_der(self) -> bytes:
        return spki_der(self.public_key)

    @property
    def kid(self) -> str:
        return key_id(self.public_key)

    @property
    def alg(self) -> str:
        return jws_algorithm(self.public_key)

    def sign(self, signing_input: bytes) -> bytes:
        """The JWS signature over ``signing_input``, checked before it is returned: a
        faulty or swapped token must not produce a signature that does not verify."""
        der_or_raw = sign_bytes(self._key, signing_input)
        try:
            verify_signature(self.public_key, der_or_raw, signing_input)
        except InvalidSignature:
            raise Unavailable(
                f"the HSM's {SERVICE_ACCOUNT_KEY} key produced a signature that does not "
                "verify; the token was replaced or is faulty"
            ) from None
        if isinstance(self._key, ec.EllipticCurvePrivateKey):
            # JWS wants ECDSA as fixed-width r || s, not DER (RFC 7518 §3.4).
            r, s = decode_dss_signature(der_or_raw)
            size = (self._key.curve.key_size + 7) // 8
            return r.to_bytes(size, "big") + s.to_bytes(size, "big")
        return der_or_raw


@dataclass(frozen=True)
class KeySet:
    """Every generation of the key as the store held them at ``loaded_at``."""

    keys: tuple[SigningKey, ...]
    loaded_at: datetime

    @property
    def current(self) -> SigningKey:
        issuing = [k for k in self.keys if k.state is GenerationState.ISSUING]
        if len(issuing) != 1:
            raise InternalError(
                f"{SERVICE_ACCOUNT_KEY} has {len(issuing)} issuing generations, not one"
            )
        return issuing[0]

    @property
    def published(self) -> tuple[SigningKey, ...]:
        """What FetchKeys answers: the current key first, then the trusted ones."""
        return (self.current, *(k for k in self.keys if k.state is GenerationState.TRUSTED))


def _rows(store: Store) -> list[GenerationRow]:
    return generation_rows(store).get(SERVICE_ACCOUNT_KEY, [])


def add_generation(
    backend: KeyBackend,
    ledger: Ledger,
    algorithm: KeyAlgorithm,
    generation: int,
    state: GenerationState,
    now: datetime,
    how: str,
) -> GenerationRow:
    """A new key in the token (sensitive, never extractable, sign-only), or the one
    already under the generation's label, and its row in the store with the audit
    record: generation 1 at init, later ones by rotation."""
    label = key_label(SERVICE_ACCOUNT_KEY, generation)
    key = backend.find_key(label)
    if key is None:
        key = backend.create_key(label, algorithm)
    else:
        # As for a CA key without its certificate: a key under kubeca's own label was
        # made by kubeca in this token (a store re-created, or a token shared by
        # several stores); it is taken, never replaced.
        how = f"{how}; the key existed in the token and was adopted"
    public = key.public_key()
    row = GenerationRow(
        SERVICE_ACCOUNT_KEY,
        generation,
        label,
        "",
        state,
        Provenance.GENERATED,
        now,
        KeyKind.JWT,
        public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode(),
    )
    ledger.commit(
        Entry(
            "ca.generation_added",
            {
                "authority": SERVICE_ACCOUNT_KEY,
                "generation": generation,
                "key_label": label,
                "state": state.value,
                "provenance": row.provenance.value,
                "kind": KeyKind.JWT.value,
                "kid": key_id(public),
                "how": how,
            },
            "warning",
            change=AddGeneration(row),
        )
    )
    return row


def initialize(backend: KeyBackend, ledger: Ledger, algorithm: KeyAlgorithm, now: datetime) -> str:
    """Create generation 1 if the store has none; never replace a key."""
    existing = _rows(ledger.store)
    if existing:
        keys = load_keys(backend, existing, now)
        line = (
            f"{SERVICE_ACCOUNT_KEY}: already initialized, nothing changed (kid {keys.current.kid})"
        )
        kept = algorithm_of(keys.current._key)
        if kept is not algorithm:
            line += (
                f" (its key is {kept.value}, the config asks {algorithm.value}; init never "
                "replaces a key: rotate it)"
            )
        return line
    adopted = backend.find_key(key_label(SERVICE_ACCOUNT_KEY, 1)) is not None
    row = add_generation(
        backend,
        ledger,
        algorithm,
        1,
        GenerationState.ISSUING,
        now,
        f"created an {algorithm.value} token-signing key in the HSM",
    )
    keys = load_keys(backend, [row], now)
    what = (
        "adopted the token-signing key already in the HSM"
        if adopted
        else f"created an {algorithm.value} token-signing key in the HSM"
    )
    return f"{SERVICE_ACCOUNT_KEY}: {what} (kid {keys.current.kid})"


def load_keys(backend: KeyBackend, rows: Sequence[GenerationRow], now: datetime) -> KeySet:
    """Each row's HSM key, checked against the public key the store recorded."""
    keys = []
    for row in rows:
        key = backend.find_key(row.key_label)
        if key is None:
            raise ConfigError(
                f"{SERVICE_ACCOUNT_KEY}: generation {row.generation} needs the HSM key "
                f"{row.key_label!r}, which the token does not hold"
            )
        recorded = row.public_key_pem.encode()
        actual = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        if row.kind is not KeyKind.JWT or recorded != actual:
            raise ConfigError(
                f"{SERVICE_ACCOUNT_KEY}: generation {row.generation}'s public key in the store "
                f"does not match the HSM key {row.key_label!r}; refusing to start"
            )
        signing = SigningKey(row.generation, row.state, key)
        jws_algorithm(signing.public_key)
        keys.append(signing)
    key_set = KeySet(tuple(keys), now)
    key_set.current  # noqa: B018  # exactly one issuing generation, checked at load
    return key_set


class KeyRing:
    """The key set one process serves, re-read from the store at most every
    ``recheck_seconds`` so that a rotation step taken by another process or replica
    (``kubeca-server ca rotate ... --authority service-account``) reaches FetchKeys and
    Sign without a restart. A request sees one consistent ``KeySet``."""

    def __init__(
        self,
        backend: KeyBackend,
        store: Store,
        clock: Clock,
        recheck_seconds: float = 2.0,
    ) -> None:
        self._backend = backend
        self._store = store
        self._clock = clock
        self._recheck = recheck_seconds
        self._lock = threading.Lock()
        rows = _rows(store)
        if not rows:
            raise ConfigError(
                f"{SERVICE_ACCOUNT_KEY}: no token-signing key in the store; run "
                "'kubeca-server init' first"
            )
        self._rows = tuple(rows)
        self._set = load_keys(backend, rows, clock())
        self._checked = time.monotonic()

    @classmethod
    def open(cls, backend: KeyBackend, store: Store, clock: Clock) -> KeyRing | None:
        """The ring, or None when init has not made the key yet."""
        return cls(backend, store, clock) if _rows(store) else None

    def keys(self) -> KeySet:
        if time.monotonic() - self._checked >= self._recheck:
            self.reload()
        return self._set

    def reload(self) -> None:
        with self._lock:
            self._checked = time.monotonic()
            rows = tuple(_rows(self._store))
            if rows != self._rows:
                self._set = load_keys(self._backend, rows, self._clock())
                self._rows = rows
            else:
                # Same keys, freshly confirmed: FetchKeys' data_timestamp says so.
                self._set = dataclasses.replace(self._set, loaded_at=self._clock())
