"""Certificate serial numbers."""

from __future__ import annotations

import secrets

SERIAL_BITS = 128


def new_serial() -> int:
    """128 random bits, high bit clear so DER needs no sign octet: positive, 16 octets.

    RFC 5280 allows up to 20 octets; CA/B asks for at least 64 bits of entropy. The
    lowest value is bumped off zero, which RFC 5280 forbids.
    """
    return secrets.randbits(SERIAL_BITS - 1) or 1
