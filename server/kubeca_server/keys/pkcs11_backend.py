"""CA keys in a PKCS#11 token (SoftHSM2 in development, a vendor module in production).

Every PKCS#11 call in the process goes through one lock: python-pkcs11 initializes
the module with C_Initialize(NULL), which tells SoftHSM it will not be called from
several threads, and two concurrent calls then crash it (hsm-notes.md §1). The
service scales with worker processes instead.

Login is per process, so the backend logs in once and keeps that session. A lost
session or device error is recovered once: re-initialize the module, log in again,
look the key up again, retry. A wrong PIN is never retried: it can lock a real HSM.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import pkcs11
import structlog
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key
from kubeca_client.errors import ConfigError, Unavailable
from kubeca_client.keys import KeyAlgorithm
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11.util.ec import (
    encode_ec_public_key,
    encode_ecdsa_signature,
    encode_named_curve_parameters,
)
from pkcs11.util.rsa import encode_rsa_public_key

from kubeca_server.keys.backend import CAPrivateKey
from kubeca_server.keys.hsm_key import HsmEcPrivateKey, HsmRsaPrivateKey

log = structlog.get_logger("kubeca.hsm")

T = TypeVar("T")

# Errors after which a fresh module initialization and login may help.
RECOVERABLE: tuple[type[Exception], ...] = (
    pkcs11.exceptions.SessionHandleInvalid,
    pkcs11.exceptions.SessionClosed,
    pkcs11.exceptions.ObjectHandleInvalid,
    pkcs11.exceptions.UserNotLoggedIn,
    pkcs11.exceptions.DeviceError,
    pkcs11.exceptions.DeviceRemoved,
    pkcs11.exceptions.DeviceMemory,
    pkcs11.exceptions.TokenNotPresent,
    pkcs11.exceptions.TokenNotRecognised,
    pkcs11.exceptions.GeneralError,
    pkcs11.exceptions.NoSuchToken,
    # A key that vanished with its token; after recovery it means "unavailable".
    pkcs11.exceptions.NoSuchKey,
    pkcs11.exceptions.KeyHandleInvalid,
    pkcs11.exceptions.FunctionFailed,
)
# Errors that retrying makes worse.
NEVER_RETRY: tuple[type[Exception], ...] = (
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
_CURVE_OIDS = {"secp256r1": "secp256r1", "secp384r1": "secp384r1"}


def key_id(label: str) -> bytes:
    """A stable CKA_ID for a label, so tools like pkcs11-tool can pair the objects."""
    return hashlib.sha256(label.encode()).digest()[:16]


class Pkcs11Backend:
    def __init__(self, module: str, token_label: str, pin: str) -> None:
        self._module = module
        self._token_label = token_label
        self._pin = pin
        self._lock = threading.Lock()
        self._lib: Any = None
        self._session: Any = None
        self._handles: dict[str, Any] = {}
        with self._lock:
            try:
                self._connect()
            except NEVER_RETRY as exc:
                raise ConfigError(
                    f"the HSM refused the PIN for token {token_label!r} ({type(exc).__name__})"
                ) from None
            except pkcs11.exceptions.PKCS11Error as exc:
                raise Unavailable(self._describe(exc)) from None

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, pkcs11.exceptions.NoSuchToken):
            return f"no token labelled {self._token_label!r} in PKCS#11 module {self._module}"
        name = type(exc).__name__
        detail = str(exc)
        return f"the HSM is unavailable ({name}{': ' + detail if detail else ''})"

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

    def _run(self, operation: Callable[[Any], T]) -> T:
        with self._lock:
            try:
                if self._session is None:
                    self._reconnect()
                return operation(self._session)
            except NEVER_RETRY as exc:
                raise ConfigError(f"the HSM refused the PIN ({type(exc).__name__})") from None
            except RECOVERABLE as first:
                log.warning("hsm.recovering", error=type(first).__name__)
                try:
                    self._reconnect()
                    result = operation(self._session)
                except NEVER_RETRY as exc:
                    raise ConfigError(f"the HSM refused the PIN ({type(exc).__name__})") from None
                except pkcs11.exceptions.PKCS11Error as second:
                    self._session = None
                    self._handles.clear()
                    log.error("hsm.unavailable", error=type(second).__name__)
                    raise Unavailable(self._describe(second)) from None
                log.info("hsm.recovered")
                return result

    # --- KeyBackend ------------------------------------------------------------------

    def find_key(self, label: str) -> CAPrivateKey | None:
        def lookup(session: Any) -> Any:
            try:
                return session.get_key(object_class=ObjectClass.PUBLIC_KEY, label=label)
            except pkcs11.exceptions.NoSuchKey:
                return None

        public = self._run(lookup)
        if public is None:
            return None
        return self._wrap(label, public)

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

        def generate(session: Any) -> Any:
            for object_class in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
                if list(
                    session.get_objects({Attribute.CLASS: object_class, Attribute.LABEL: label})
                ):
                    raise ValueError(f"the token already holds a key labelled {label!r}")
            if algorithm.is_rsa:
                public, _ = session.generate_keypair(KeyType.RSA, algorithm.rsa_bits, **common)
            else:
                params = session.create_domain_parameters(
                    KeyType.EC,
                    {Attribute.EC_PARAMS: encode_named_curve_parameters(algorithm.curve.name)},
                    local=True,
                )
                public, _ = params.generate_keypair(**common)
            return public

        public = self._run(generate)
        log.info("hsm.key_generated", label=label, algorithm=algorithm.value)
        return self._wrap(label, public)

    def key_attributes(self, label: str) -> dict[str, bool]:
        """The private key's protection attributes as the token reports them."""
        names = {
            "sensitive": Attribute.SENSITIVE,
            "always_sensitive": Attribute.ALWAYS_SENSITIVE,
            "extractable": Attribute.EXTRACTABLE,
            "never_extractable": Attribute.NEVER_EXTRACTABLE,
            "sign": Attribute.SIGN,
            "decrypt": Attribute.DECRYPT,
        }

        def read(session: Any) -> dict[str, bool]:
            key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=label)
            return {name: bool(key[attr]) for name, attr in names.items()}

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
            handle = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=label)
            self._handles[label] = handle
        return handle

    def _wrap(self, label: str, public_object: Any) -> CAPrivateKey:
        key_type = public_object[Attribute.KEY_TYPE]
        if key_type == KeyType.EC:
            public = load_der_public_key(encode_ec_public_key(public_object))
            if not isinstance(public, ec.EllipticCurvePublicKey):
                raise TypeError(f"key {label!r} is not an EC key")

            def sign_ec(data: bytes, algorithm: hashes.HashAlgorithm) -> bytes:
                # SoftHSM 2.6 has CKM_ECDSA only: hash here, sign the digest there.
                digest = hashes.Hash(algorithm)
                digest.update(data)
                prehashed = digest.finalize()
                raw = self._run(
                    lambda s: self._private_handle(s, label).sign(
                        prehashed, mechanism=Mechanism.ECDSA
                    )
                )
                return bytes(encode_ecdsa_signature(raw))

            return HsmEcPrivateKey(label, public, sign_ec)
        if key_type == KeyType.RSA:
            public = load_der_public_key(encode_rsa_public_key(public_object))
            if not isinstance(public, rsa.RSAPublicKey):
                raise TypeError(f"key {label!r} is not an RSA key")

            def sign_rsa(data: bytes, algorithm: hashes.HashAlgorithm) -> bytes:
                mechanism = _RSA_MECHANISMS[algorithm.name]
                return bytes(
                    self._run(
                        lambda s: self._private_handle(s, label).sign(data, mechanism=mechanism)
                    )
                )

            return HsmRsaPrivateKey(label, public, sign_rsa)
        raise TypeError(f"key {label!r} has unsupported type {key_type!r}")
