"""Page tokens: where the last page ended, as an opaque string handed to the client.

A listing resumes after a (moment, name) pair in its own order. The token is that
pair, JSON in URL-safe base64; what comes back is untrusted input, so anything that
is not such a pair is INVALID_ARGUMENT.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

from kubeca_client.errors import InvalidArgument

MAX_TOKEN = 512  # far more than any token handed out; bounds what is decoded


def encode(moment: datetime, name: str) -> str:
    raw = json.dumps([moment.timestamp(), name]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(token: str) -> tuple[datetime, str] | None:
    """The pair in ``token``; None for the empty token (the first page)."""
    if not token:
        return None
    try:
        if len(token) > MAX_TOKEN:
            raise ValueError(token)
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        seconds, name = json.loads(raw)
        if not isinstance(name, str) or not isinstance(seconds, int | float):
            raise ValueError(token)
        return datetime.fromtimestamp(seconds, UTC), name
    except (ValueError, TypeError, OverflowError, OSError):
        raise InvalidArgument("page_token is not one this service handed out") from None


def page_size(size: int, default: int, maximum: int) -> int:
    if not 0 <= size <= maximum:
        raise InvalidArgument(f"page_size must be 0 (the default, {default}) to {maximum}")
    return size or default
