"""Showing untrusted text safely: bounded, printable, one line.

Refusals name the value that was refused; a hostile value may be megabytes long or
full of control characters, so every echo goes through ``excerpt``.
"""

from __future__ import annotations

DEFAULT_LIMIT = 80


def excerpt(value: str, limit: int = DEFAULT_LIMIT) -> str:
    """``value`` quoted as Python would (control characters escaped), cut to about
    ``limit`` characters with an ellipsis when longer."""
    shown = value if len(value) <= limit else value[: max(limit - 3, 1)] + "..."
    return repr(shown)


def clip(value: str, limit: int) -> str:
    """``value`` cut to ``limit`` characters, for audit fields (stored, not shown)."""
    return value if len(value) <= limit else value[:limit]
