"""A query parameter as a route declares it (`query=` in gateway.routing), and the list routes' page pair.

A QueryParam is a name, a JSON Schema (string or integer) and what it means. The OpenAPI document publishes
the schema as is, and `gateway.http.params` checks every `/api/v1` request against the same schema before its
handler runs. A QueryParam accepts only the schema keywords it enforces, so a documented constraint cannot go
unchecked.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from shared.infra import pages

DEFAULT_LIMIT, MAX_LIMIT = 50, 200
# The JSON Schema keywords a QueryParam enforces (and `default`/`description`, which constrain nothing).
ENFORCED: Final = frozenset({"type", "enum", "minLength", "maxLength", "pattern", "minimum", "maximum"})
_ANNOTATIONS: Final = frozenset({"default", "description"})
_INTEGER = re.compile(r"-?[0-9]+")


def _search(pattern: str) -> re.Pattern[str]:
    """A JSON Schema (ECMA-262) pattern for Python: unanchored, and a final `$` ends the string (Python's
    `$` would also match before a trailing newline)."""
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern)


@dataclass(frozen=True, slots=True)
class QueryParam:
    """One query parameter: its name, its JSON Schema (string or integer) and what it means."""

    name: str
    schema: Mapping[str, Any]
    description: str = ""
    _pattern: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        unchecked = set(self.schema) - ENFORCED - _ANNOTATIONS
        if unchecked:
            raise ValueError(f"query parameter {self.name!r}: no check for schema keyword(s) {sorted(unchecked)}")
        if self.schema.get("type") not in ("string", "integer"):
            raise ValueError(f"query parameter {self.name!r}: type must be string or integer")
        if "pattern" in self.schema:
            object.__setattr__(self, "_pattern", _search(self.schema["pattern"]))

    def refusal(self, value: str) -> str | None:
        """Why `value` breaks the schema (what it must be instead), or None when it keeps to it."""
        s = self.schema
        if "enum" in s and value not in s["enum"]:
            return f"one of {', '.join(map(str, s['enum']))}"
        if s["type"] == "integer":
            low, high = s.get("minimum", -(2**63)), s.get("maximum", 2**63 - 1)
            if not _INTEGER.fullmatch(value) or not low <= int(value) <= high:
                return f"an integer from {low} to {high}"
            return None
        if len(value) < s.get("minLength", 0):
            return f"at least {s['minLength']} character(s)"
        if "maxLength" in s and len(value) > s["maxLength"]:
            return f"at most {s['maxLength']} characters"
        if self._pattern is not None and self._pattern.search(value) is None:
            return f"must match the pattern {s['pattern']}"
        return None


LIMIT: Final = QueryParam(
    "limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}, "Items per page."
)
# Every string of the cursor's form is a position (shared.infra.pages), so the pattern is the whole check.
CURSOR: Final = QueryParam(
    "cursor", {"type": "string", "pattern": pages.CURSOR_PATTERN}, "`next_cursor` of the previous page."
)
PAGE: Final = (LIMIT, CURSOR)  # what every list route takes
