"""Query parameters: declared once per route here, documented from these declarations, enforced from them.

Each route's parameters are QueryParams, keyed by method and route template (a route not listed takes
none). The OpenAPI document publishes each one's JSON Schema as is, and the middleware below checks every
`/api/v1` request against the same schema before its handler runs: an unknown, repeated, oversized or
NUL-holding parameter, or a value the schema refuses, is a 400. A QueryParam accepts only the schema
keywords it enforces, so a documented constraint cannot go unchecked.

A typo such as `?stauts=failed` silently ignored would return every job; rejecting it tells the caller at
once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, get_args

from aiohttp import web
from aiohttp.typedefs import Handler

from shared.core.errors import BadRequest
from shared.core.status import JobStatus
from shared.infra import pages

API_PREFIX: Final = "/api/v1/"
MAX_PARAM_CHARS: Final = 512
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
PAGE: Final = (LIMIT, CURSOR)

QUERY: Final[Mapping[tuple[str, str], tuple[QueryParam, ...]]] = {
    ("GET", "/api/v1/jobs"): (
        QueryParam("status", {"type": "string", "enum": list(get_args(JobStatus))}, "Only jobs in this status."),
        QueryParam("type", {"type": "string", "maxLength": 100}, "Only jobs of this type."),
        QueryParam("queue", {"type": "string", "maxLength": 100}, "Only jobs of this queue."),
        QueryParam("batch_id", {"type": "string", "maxLength": 64}, "Only the members of this batch."),
        *PAGE,
    ),
    ("GET", "/api/v1/schedules"): PAGE,
    ("GET", "/api/v1/notifications"): (
        QueryParam("unread", {"type": "string", "enum": ["true", "false"]}, "Only unread ones when `true`."),
        *PAGE,
    ),
    ("GET", "/api/v1/api-keys"): PAGE,
    ("GET", "/api/v1/uploads"): PAGE,
    ("POST", "/api/v1/uploads"): (
        QueryParam(
            "filename",
            {"type": "string", "minLength": 1, "maxLength": 255},
            "For a raw body: the file's name (else Content-Disposition's).",
        ),
    ),
    ("GET", "/api/v1/webhook-signing-key"): (
        QueryParam(
            "owner",
            {"type": "string", "minLength": 1, "maxLength": 200},
            "Whose key (an admin may name any owner; a user only itself). Default: the caller.",
        ),
    ),
}
ACCEPTED: Final[Mapping[tuple[str, str], frozenset[str]]] = {
    key: frozenset(p.name for p in declared) for key, declared in QUERY.items()
}


def bad_query(name: str, msg: str) -> BadRequest:
    return BadRequest(f"query parameter `{name}`: {msg}", errors=[{"loc": ["query", name], "msg": msg}])


def declared(request: web.Request) -> Mapping[str, QueryParam]:
    """The parameters of the matched route, by name."""
    resource = request.match_info.route.resource
    if resource is None:
        return {}
    method = "GET" if request.method == "HEAD" else request.method
    return {p.name: p for p in QUERY.get((method, resource.canonical), ())}


def accepted(request: web.Request) -> frozenset[str]:
    return frozenset(declared(request))


def page_limit(query: Mapping[str, str]) -> int:
    """`?limit=`: an integer from 1 to MAX_LIMIT, DEFAULT_LIMIT when absent.

    Raises:
        BadRequest: anything else (0, 201, -1, "abc", "").
    """
    raw = query.get("limit", str(DEFAULT_LIMIT))
    msg = LIMIT.refusal(raw) if len(raw) <= MAX_PARAM_CHARS else "an integer"
    if msg is not None:
        raise bad_query("limit", msg)
    return int(raw)


def page(query: Mapping[str, str]) -> tuple[int, str | None]:
    """`?limit=` and `?cursor=` of a list route (the middleware checked the cursor against its pattern)."""
    return page_limit(query), query.get("cursor") or None


def check_query(request: web.Request) -> None:
    """Raises BadRequest for an unknown, repeated, oversized or NUL-holding parameter, or one its schema refuses."""
    query = request.query
    if not query or request.match_info.http_exception is not None:
        return  # no route: the 404 (or 405) says more than a complaint about its parameters
    params = declared(request)
    unknown = sorted(set(query) - set(params))
    if unknown:
        raise BadRequest(
            f"unknown query parameter(s): {', '.join(unknown)}"
            + (f"; this route takes {', '.join(sorted(params))}" if params else "; this route takes none"),
            errors=[{"loc": ["query", name], "msg": "unknown parameter"} for name in unknown],
        )
    for name in query:
        values = query.getall(name)
        if len(values) > 1:
            raise bad_query(name, "given more than once")
        if len(values[0]) > MAX_PARAM_CHARS or "\x00" in values[0]:
            raise bad_query(name, f"at most {MAX_PARAM_CHARS} characters, no NUL")
        msg = params[name].refusal(values[0])
        if msg is not None:
            raise bad_query(name, msg)


@web.middleware
async def query_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Checks the query of every `/api/v1` request before its handler runs (after authentication)."""
    if request.path.startswith(API_PREFIX):
        check_query(request)
    return await handler(request)
