"""The shape every id the API hands out has: at most MAX_ID_CHARS characters, URL-safe, never a NUL.

An id a caller sends that cannot have this shape names nothing: it is answered as unknown (a 404) without
reading the database, and never reaches a query that would refuse it with an error of its own.
"""

from __future__ import annotations

from typing import Final

MAX_ID_CHARS: Final = 64


def well_formed_id(value: str) -> bool:
    """Whether `value` can name anything: 1 to MAX_ID_CHARS characters, none of them a NUL."""
    return 0 < len(value) <= MAX_ID_CHARS and "\x00" not in value
