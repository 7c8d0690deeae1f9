"""CA keys in a PKCS#11 token (SoftHSM2 in development, a vendor module in production).

Every PKCS#11 call in the process goes through one lock per module: python-pkcs11
initializes the module with C_Initialize(NULL), which tells SoftHSM it will not be
called from several threads, and two concurrent calls then crash it (hsm-notes.md §1).
The lock is per module path, not per backend, because the module is loaded once per
process: two backends share its sessions, its re-initialization and its logout. No
python-pkcs11 object leaves the lock; callers get bytes and cryptography objects.

Login is per process, so the backend logs in once and keeps that session. A lost
session or device error is recovered once: re-initialize the module, log in again,
look the key up again, retry. A refused PIN is never tried again: a real HSM locks the
PIN after a few failures, and only a restart (after fixing the PIN) tries once more.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pkcs11
import structlog
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_der_public_key,
)
from kubeca_client.errors import ConfigError, Unavailable
from kubeca_client.keys import KeyAlgorithm
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11.util import biginteger
from pkcs11.util.ec import (
    decode_ec_public_key,
    encode_ec_public_key,
    encode_named_curve_parameters,
)
from pkcs11.util.rsa import encode_rsa_public_key

from kubeca_server.keys.backend import CAPrivateKey, KeyFacts
from kubeca_server.keys.hsm_key import HsmEcPrivateKey, HsmRsaPrivateKey

log = structlog.get_logger("kubeca.hsm")

T = TypeVar("T")

# Looks for the token at start before "no such token" is the answer (see __init__).
START_ATTEMPTS = 6
START_RETRY_SECONDS = 0.2

# Errors after which a fresh module initialization and login may help.
RECOVERABLE: tuple[type[Exception], ...] = (
    pkcs11.exceptions.SessionHandleInvalid,
    pkcs11.exceptions.SessionClosed,
    pkcs11.exceptions.ObjectHandleInvalid,
    pkcs11.exceptions.KeyHandleInvalid,
    pkcs11.exceptions.UserNotLoggedIn,
    pkcs11.exceptions.DeviceError,
    pkcs11.exceptions.DeviceRemoved,
    pkcs11.exceptions.DeviceMemory,
    pkcs11.exceptions.TokenNotPresent,
    pkcs11.exceptions.TokenNotRecognised,
    pkcs11.exceptions.GeneralError,
    pkcs11.exceptions.FunctionFailed,
    pkcs11.exceptions.NoSuchToken,
    pkcs11.exceptions.OperationActive,
    # A key that vanished with its token; after recovery it means "unavailable".
    pkcs11.exceptions.NoSuchKey,
)
# Errors that retrying makes worse.
PIN_REFUSED: tuple[type[Exception], ...] = (
    pkcs11.exceptions.PinIncorrect,
    pkcs11.exceptions.PinLocked,
    pkcs11.exceptions.PinExpired,
    pkcs11.exceptions.PinInvalid,
    pkcs11.exceptions.PinLenRange,
)

_RSA_MECHANISMS = {
    "sha256": Mechanism.SHA256_RSA_PKCS,
    "sha384": Mechanism.SHA384_RSA_PKCS,
    "sha512": Mechanism.SHA512_RSA_PKCS,
}

_module_locks: dict[str, threading.Lock] = {}
_module_locks_guard = threading.Lock()


def _module_lock(module: str) -> threading.Lock:
    with _module_locks_guard:
        return _module_locks.setdefault(module, threading.Lock())


def key_id(label: str) -> bytes:
    """A stable CKA_ID for a label, so tools like pkcs11-tool can pair the objects."""
    return hashlib.sha256(label.encode()).digest()[:16]


def _objects(session: Any, object_class: ObjectClass, label: str) -> list[Any]:
    # Consumed in full, so the search is finalized here, under the lock, and never
    # left open by an exception to collide with the next one (OperationActive).
    return list(session.get_objects({Attribute.CLASS: object_class, Attribute.LABEL: label}))


def _one(session: Any, object_class: ObjectClass, label: str) -> Any | None:
    found = _objects(session, object_class, label)
    if len(found) > 1:
        raise ConfigError(
            f"the token holds {len(found)} {object_class.name.lower()} objects labelled "
            f"{label!r}; kubeca cannot tell which is the CA key (remove the extra ones)"
        )
    return found[0] if found else None


def _public_der(public: Any) -> tuple[KeyType, bytes]:
    key_type = public[Attribute.KEY_TYPE]
    if key_type == KeyType.EC:
        return key_type, bytes(encode_ec_public_key(public))
    if key_type == KeyType.RSA:
        return key_type, bytes(encode_rsa_public_key(public))
    raise ConfigError(f"unsupported key type {key_type!r} in the token")


def _int_bytes(value: int) -> bytes:
    return bytes(biginteger(value))


def _import_templates(key: CAPrivateKey) -> tuple[dict[Any, Any], dict[Any, Any]]:
    """The key's components as PKCS#11 attributes: (private, public)."""
    if isinstance(key, rsa.RSAPrivateKey):
        numbers = key.private_numbers()
        public_numbers = numbers.public_numbers
        shared = {
            Attribute.KEY_TYPE: KeyType.RSA,
            Attribute.MODULUS: _int_bytes(public_numbers.n),
            Attribute.PUBLIC_EXPONENT: _int_bytes(public_numbers.e),
        }
        private = {
            **shared,
            Attribute.PRIVATE_EXPONENT: _int_bytes(numbers.d),
            Attribute.PRIME_1: _int_bytes(numbers.p),
            Attribute.PRIME_2: _int_bytes(numbers.q),
            Attribute.EXPONENT_1: _int_bytes(numbers.dmp1),
            Attribute.EXPONENT_2: _int_bytes(numbers.dmq1),
            Attribute.COEFFICIENT: _int_bytes(numbers.iqmp),
        }
        return private, dict(shared)
    spki = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    public = decode_ec_public_key(spki)
    public.pop(Attribute.CLASS)
    size = (key.curve.key_size + 7) // 8
    private = {
        Attribute.KEY_TYPE: KeyType.EC,
        Attribute.EC_PARAMS: public[Attribute.EC_PARAMS],
        Attribute.VALUE: key.private_numbers().private_value.to_bytes(size, "big"),
    }
    return private, public


class Pkcs11Backend:
    """CA keys in one PKCS#11 token, found by label, handed out as cryptography key
    objects whose ``sign`` runs in the token under the module's lock; a lost session is
    recovered once per call, a refused PIN never retried."""

    def __init__(
        self,
        module: str,
        token_label: str,
        pin: str,
        on_sign: Callable[[float], None] = lambda seconds: None,
    ) -> None:
        self._on_sign = on_sign
        self._module = module
        self._token_label = token_label
        self._pin = pin
        self._lock = _module_lock(module)
        self._lib: Any = None
        self._session: Any = None
        self._handles: dict[str, Any] = {}
        self._pin_refused: str | None = None
        self._connections = 0
        with self._lock:
            for attempt in range(START_ATTEMPTS):
                try:
                    self._connect()
                    break
                except PIN_REFUSED as exc:
                    raise ConfigError(self._refuse_pin(exc)) from None
                except (pkcs11.exceptions.NoSuchToken, pkcs11.exceptions.GeneralError) as exc:
                    # At start a missing token is a setting to fix, not an outage to wait
                    # out; but SoftHSM skips a token whose files another process (a
                    # sibling worker logging in) is rewriting at that moment (or fails
                    # with CKR_GENERAL_ERROR), so look again a few times before calling
                    # it missing.
                    if attempt == START_ATTEMPTS - 1:
                        if isinstance(exc, pkcs11.exceptions.NoSuchToken):
                            raise ConfigError(self._describe(exc)) from None
                        raise Unavailable(self._describe(exc)) from None
                    time.sleep(START_RETRY_SECONDS)
                    lib: Any = self._lib
                    lib.reinitialize()
                except pkcs11.exceptions.PKCS11Error as exc:
                    raise Unavailable(self._describe(exc)) from None

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, pkcs11.exceptions.NoSuchToken):
            return f"no token labelled {self._token_label!r} in PKCS#11 module {self._module}"
        name = type(exc).__name__
        detail = str(exc)
        return f"the HSM is unavailable ({name}{': ' + detail if detail else ''})"

    def _refuse_pin(self, exc: BaseException) -> str:
        self._pin_refused = (
            f"the HSM refused the PIN for token {self._token_label!r} ({type(exc).__name__}); "
            "kubeca will not try it again until restarted, as a real HSM locks the PIN "
            "after a few failures"
        )
        return self._pin_refused

    # --- connection management; the lock is held by the caller -------------------

    def _connect(self) -> None:
        if self._lib is None:
            try:
                self._lib = pkcs11.lib(self._module)
            except (OSError, RuntimeError, pkcs11.exceptions.PKCS11Error) as exc:
                raise ConfigError(f"cannot load PKCS#11 module {self._module}: {exc}") from None
        token = self._lib.get_token(token_label=self._token_label)
        try:
            self._session = token.open(user_pin=self._pin, rw=True)
        except pkcs11.exceptions.UserAlreadyLoggedIn:
            # Login belongs to the process, not the session: someone in this process
            # logged in already, and a second login is an error, not a no-op.
            self._session = token.open(rw=True)
        self._connections += 1

    @property
    def connections(self) -> int:
        return self._connections

    def _reconnect(self) -> None:
        self._handles.clear()
        session, self._session = self._session, None
        if session is not None:
            # The session is usually gone already; that is why we are here.
            with contextlib.suppress(pkcs11.exceptions.PKCS11Error):
                session.close()
        if self._lib is not None:
            self._lib.reinitialize()
        self._connect()

    def _run(self, operation: Callable[[Any], T], *, retry: bool = True) -> T:
        """Run ``operation(session)`` under the lock, recovering a lost session once.
        Every PKCS#11 failure leaves as the error taxonomy, never as a raw exception."""
        with self._lock:
            if self._pin_refused is not None:
                raise Unavailable(self._pin_refused)
            try:
                if self._session is None:
                    self._reconnect()
                return operation(self._session)
            except PIN_REFUSED as exc:
                raise Unavailable(self._refuse_pin(exc)) from None
            except RECOVERABLE as first:
                if not retry:
                    raise Unavailable(self._describe(first)) from None
                log.warning("hsm.recovering", error=type(first).__name__)
                try:
                    self._reconnect()
                    result = operation(self._session)
                except PIN_REFUSED as exc:
                    raise Unavailable(self._refuse_pin(exc)) from None
                except pkcs11.exceptions.PKCS11Error as second:
                    self._session = None
                    self._handles.clear()
                    log.error("hsm.unavailable", error=type(second).__name__)
                    raise Unavailable(self._describe(second)) from None
                log.info("hsm.recovered")
                return result
            except pkcs11.exceptions.PKCS11Error as exc:
                raise Unavailable(self._describe(exc)) from None

    # --- KeyBackend ------------------------------------------------------------------

    def find_key(self, label: str) -> CAPrivateKey | None:
        """The key labelled ``label``; the private key is the one that matters."""

        def lookup(session: Any) -> tuple[KeyType, bytes] | None:
            private = _one(session, ObjectClass.PRIVATE_KEY, label)
            public = _one(session, ObjectClass.PUBLIC_KEY, label)
            if private is None and public is None:
                return None
            if private is None:
                raise ConfigError(
                    f"the token holds a public key labelled {label!r} but not its private "
                    "key; restore the token from its backup (kubeca never makes a new key "
                    "under an existing label)"
                )
            if public is None:
                raise ConfigError(
                    f"the token holds the private key {label!r} but not its public key "
                    "object; re-create the public object from the CA certificate with "
                    "pkcs11-tool, or restore the token"
                )
            return _public_der(public)

        found = self._run(lookup)
        return None if found is None else self._wrap(label, *found)

    def create_key(self, label: str, algorithm: KeyAlgorithm) -> CAPrivateKey:
        private_template = {
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.SIGN: True,
            Attribute.DECRYPT: False,
            Attribute.UNWRAP: False,
            Attribute.DERIVE: False,
        }
        public_template = {
            Attribute.TOKEN: True,
            Attribute.VERIFY: True,
            Attribute.ENCRYPT: False,
            Attribute.WRAP: False,
        }
        common = {
            "id": key_id(label),
            "label": label,
            "store": True,
            "capabilities": MechanismFlag.SIGN | MechanismFlag.VERIFY,
            "public_template": public_template,
            "private_template": private_template,
        }

        def generate(session: Any) -> tuple[KeyType, bytes]:
            for object_class in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
                if _objects(session, object_class, label):
                    raise ConfigError(f"the token already holds a key labelled {label!r}")
            if algorithm.is_rsa:
                public, _ = session.generate_keypair(KeyType.RSA, algorithm.rsa_bits, **common)
            else:
                params = session.create_domain_parameters(
                    KeyType.EC,
                    {Attribute.EC_PARAMS: encode_named_curve_parameters(algorithm.curve.name)},
                    local=True,
                )
                public, _ = params.generate_keypair(**common)
            return _public_der(public)

        # Never retried: a first attempt may have stored the key before failing.
        key_type, der = self._run(generate, retry=False)
        log.info("hsm.key_generated", label=label, algorithm=algorithm.value)
        return self._wrap(label, key_type, der)

    def import_key(self, label: str, key: CAPrivateKey) -> CAPrivateKey:
        """C_CreateObject for the private key (sensitive, non-extractable, sign-only)
        and its public key, under one label and CKA_ID. The token will say the truth
        about such a key: not ALWAYS_SENSITIVE, not NEVER_EXTRACTABLE, not LOCAL."""
        private_parts, public_parts = _import_templates(key)
        identifier = key_id(label)
        private_template = {
            **private_parts,
            Attribute.CLASS: ObjectClass.PRIVATE_KEY,
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.SIGN: True,
            Attribute.DECRYPT: False,
            Attribute.UNWRAP: False,
            Attribute.DERIVE: False,
            Attribute.LABEL: label,
            Attribute.ID: identifier,
        }
        public_template = {
            **public_parts,
            Attribute.CLASS: ObjectClass.PUBLIC_KEY,
            Attribute.TOKEN: True,
            Attribute.VERIFY: True,
            Attribute.ENCRYPT: False,
            Attribute.WRAP: False,
            Attribute.LABEL: label,
            Attribute.ID: identifier,
        }

        def create(session: Any) -> tuple[KeyType, bytes]:
            for object_class in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
                if _objects(session, object_class, label):
                    raise ConfigError(f"the token already holds a key labelled {label!r}")
            private = session.create_object(private_template)
            try:
                public = session.create_object(public_template)
            except pkcs11.exceptions.PKCS11Error:
                # Never leave half a key behind: the next import would be refused.
                private.destroy()
                raise
            return _public_der(public)

        # Never retried: a first attempt may have stored the key before failing.
        key_type, der = self._run(create, retry=False)
        log.info("hsm.key_imported", label=label)
        return self._wrap(label, key_type, der)

    def key_facts(self, label: str) -> KeyFacts | None:
        def read(session: Any) -> KeyFacts | None:
            private = _one(session, ObjectClass.PRIVATE_KEY, label)
            if private is None:
                return None
            return KeyFacts(
                sensitive=bool(private[Attribute.SENSITIVE]),
                extractable=bool(private[Attribute.EXTRACTABLE]),
                always_sensitive=bool(private[Attribute.ALWAYS_SENSITIVE]),
                never_extractable=bool(private[Attribute.NEVER_EXTRACTABLE]),
                local=bool(private[Attribute.LOCAL]),
                sign_only=bool(private[Attribute.SIGN])
                and not any(
                    bool(private[a])
                    for a in (Attribute.DECRYPT, Attribute.UNWRAP, Attribute.DERIVE)
                ),
            )

        return self._run(read)

    def probe(self) -> None:
        def ping(session: Any) -> None:
            # C_GetTokenInfo fails once the token is gone. An object search would not:
            # SoftHSM then answers an empty list, as if the token were merely empty.
            self._lib.get_token(token_label=self._token_label)

        self._run(ping)

    def close(self) -> None:
        with self._lock:
            self._handles.clear()
            if self._session is not None:
                with contextlib.suppress(pkcs11.exceptions.PKCS11Error):
                    self._session.close()
                self._session = None

    # --- signing -----------------------------------------------------------------

    def _private_handle(self, session: Any, label: str) -> Any:
        handle = self._handles.get(label)
        if handle is None:
            handle = _one(session, ObjectClass.PRIVATE_KEY, label)
            if handle is None:
                raise pkcs11.exceptions.NoSuchKey(label)
            self._handles[label] = handle
        return handle

    def _wrap(self, label: str, key_type: KeyType, public_der: bytes) -> CAPrivateKey:
        public = load_der_public_key(public_der)
        if key_type == KeyType.EC and isinstance(public, ec.EllipticCurvePublicKey):

            def sign_ec(data: bytes, algorithm: hashes.HashAlgorithm) -> bytes:
                # SoftHSM 2.6 has CKM_ECDSA only: hash here, sign the digest there.
                digest = hashes.Hash(algorithm)
                digest.update(data)
                prehashed = digest.finalize()
                started = time.perf_counter()
                raw = self._run(
                    lambda s: bytes(
                        self._private_handle(s, label).sign(prehashed, mechanism=Mechanism.ECDSA)
                    )
                )
                self._on_sign(time.perf_counter() - started)
                return _der_ecdsa(raw)

            return HsmEcPrivateKey(label, public, sign_ec)
        if key_type == KeyType.RSA and isinstance(public, rsa.RSAPublicKey):

            def sign_rsa(data: bytes, algorithm: hashes.HashAlgorithm) -> bytes:
                mechanism = _RSA_MECHANISMS[algorithm.name]
                started = time.perf_counter()
                signature = self._run(
                    lambda s: bytes(self._private_handle(s, label).sign(data, mechanism=mechanism))
                )
                self._on_sign(time.perf_counter() - started)
                return signature

            return HsmRsaPrivateKey(label, public, sign_rsa)
        raise ConfigError(f"key {label!r} is of an unsupported type")


def _der_ecdsa(raw: bytes) -> bytes:
    """PKCS#11's r || s as the DER X.509 wants. cryptography's encoder, not asn1crypto's
    (pkcs11.util.ec): on every certificate, ten times faster."""
    half = len(raw) // 2
    return encode_dss_signature(
        int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
    )
