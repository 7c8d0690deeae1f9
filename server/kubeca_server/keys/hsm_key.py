"""pyca/cryptography private-key objects whose ``sign`` goes to the HSM.

cryptography's builders accept any instance of its private-key interfaces and call
``sign``; everything that would reveal key material raises instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import NoDigestInfo, Prehashed
from cryptography.utils import Buffer

# (data, hash algorithm) -> signature in the encoding X.509 needs (DER for ECDSA).
SignFunction = Callable[[bytes, hashes.HashAlgorithm], bytes]

SUPPORTED_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)


def _not_extractable(label: str) -> NoReturn:
    raise TypeError(f"the private key {label!r} lives in the HSM and cannot be exported")


def _check_hash(algorithm: object) -> hashes.HashAlgorithm:
    if not isinstance(algorithm, SUPPORTED_HASHES):
        raise ValueError(f"HSM keys sign with SHA-256/384/512 only, not {algorithm!r}")
    return algorithm


class HsmEcPrivateKey(ec.EllipticCurvePrivateKey):
    def __init__(self, label: str, public: ec.EllipticCurvePublicKey, sign: SignFunction):
        self.label = label
        self._public = public
        self._sign = sign

    def sign(self, data: Buffer, signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise ValueError("EC keys in the HSM sign ECDSA only")
        return self._sign(bytes(data), _check_hash(signature_algorithm.algorithm))

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> NoReturn:
        raise TypeError("HSM CA keys are sign-only")

    def private_bytes(self, *args: Any, **kwargs: Any) -> NoReturn:
        _not_extractable(self.label)

    def private_numbers(self) -> NoReturn:
        _not_extractable(self.label)

    def __copy__(self) -> HsmEcPrivateKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> HsmEcPrivateKey:
        return self


class HsmRsaPrivateKey(rsa.RSAPrivateKey):
    def __init__(self, label: str, public: rsa.RSAPublicKey, sign: SignFunction):
        self.label = label
        self._public = public
        self._sign = sign

    def sign(
        self,
        data: Buffer,
        padding: padding.AsymmetricPadding,
        algorithm: hashes.HashAlgorithm | Prehashed | NoDigestInfo,
    ) -> bytes:
        if not isinstance(padding, _PKCS1v15):
            raise ValueError("RSA keys in the HSM sign PKCS#1 v1.5 only")
        return self._sign(bytes(data), _check_hash(algorithm))

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def decrypt(self, ciphertext: bytes, padding: padding.AsymmetricPadding) -> NoReturn:
        raise TypeError("HSM CA keys are sign-only")

    def private_bytes(self, *args: Any, **kwargs: Any) -> NoReturn:
        _not_extractable(self.label)

    def private_numbers(self) -> NoReturn:
        _not_extractable(self.label)

    def __copy__(self) -> HsmRsaPrivateKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> HsmRsaPrivateKey:
        return self


_PKCS1v15 = padding.PKCS1v15
