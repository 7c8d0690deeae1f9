"""The PKCS#11 backend's ECDSA signature encoding (r || s -> DER) agrees with
python-pkcs11's own encoder, which it replaces on the hot path for speed."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given
from hypothesis import strategies as st
from kubeca_server.keys.pkcs11_backend import _der_ecdsa
from pkcs11.util.ec import encode_ecdsa_signature

# Halves of 32 (P-256) and 48 (P-384) bytes, with leading zeros and high bits both likely.
halves = st.sampled_from([32, 48]).flatmap(
    lambda n: st.tuples(st.binary(min_size=n, max_size=n), st.binary(min_size=n, max_size=n))
)


@given(halves)
def test_der_matches_pkcs11_util_and_round_trips(pair: tuple[bytes, bytes]) -> None:
    r, s = pair
    der = _der_ecdsa(r + s)
    assert der == bytes(encode_ecdsa_signature(r + s))
    assert decode_dss_signature(der) == (int.from_bytes(r, "big"), int.from_bytes(s, "big"))
