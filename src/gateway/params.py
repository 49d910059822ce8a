"""Query parameters, checked once for every `/api/v1` route: unknown ones are a 400, as are bad list bounds.

A typo such as `?stauts=failed` silently ignored would return every job; rejecting it tells the caller at
once. Each route's accepted parameters are declared here, by method and route template; a route not
listed takes none.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler

from shared.errors import BadRequest

API_PREFIX: Final = "/api/v1/"
MAX_PARAM_CHARS: Final = 512
DEFAULT_LIMIT, MAX_LIMIT = 50, 200
_PAGE: Final = frozenset({"limit", "cursor"})

ACCEPTED: Final[Mapping[tuple[str, str], frozenset[str]]] = {
    ("GET", "/api/v1/jobs"): _PAGE | {"status", "type", "queue", "batch_id"},
    ("GET", "/api/v1/schedules"): _PAGE,
    ("GET", "/api/v1/notifications"): _PAGE | {"unread"},
    ("GET", "/api/v1/api-keys"): _PAGE,
    ("GET", "/api/v1/uploads"): _PAGE,
    ("POST", "/api/v1/uploads"): frozenset({"filename"}),
}

_LIMIT = re.compile(r"[0-9]{1,3}")


def bad_query(name: str, msg: str) -> BadRequest:
    return BadRequest(f"query parameter `{name}`: {msg}", errors=[{"loc": ["query", name], "msg": msg}])


def accepted(request: web.Request) -> frozenset[str]:
    resource = request.match_info.route.resource
    if resource is None:
        return frozenset()
    method = "GET" if request.method == "HEAD" else request.method
    return ACCEPTED.get((method, resource.canonical), frozenset())


def page_limit(query: Mapping[str, str]) -> int:
    """`?limit=`: an integer from 1 to MAX_LIMIT, DEFAULT_LIMIT when absent.

    Raises:
        BadRequest: anything else (0, 201, -1, "abc", "").
    """
    raw = query.get("limit", str(DEFAULT_LIMIT))
    if not _LIMIT.fullmatch(raw) or not 1 <= int(raw) <= MAX_LIMIT:
        raise bad_query("limit", f"an integer from 1 to {MAX_LIMIT}")
    return int(raw)


def page(query: Mapping[str, str]) -> tuple[int, str | None]:
    """`?limit=` and `?cursor=` of a list route (the cursor itself is checked when it is decoded)."""
    return page_limit(query), query.get("cursor") or None


def check_query(request: web.Request) -> None:
    """Raises BadRequest for an unknown, repeated, oversized or NUL-holding parameter, or a bad `limit`."""
    query = request.query
    if not query or request.match_info.http_exception is not None:
        return  # no route: the 404 (or 405) says more than a complaint about its parameters
    allowed = accepted(request)
    unknown = sorted(set(query) - allowed)
    if unknown:
        raise BadRequest(
            f"unknown query parameter(s): {', '.join(unknown)}"
            + (f"; this route takes {', '.join(sorted(allowed))}" if allowed else "; this route takes none"),
            errors=[{"loc": ["query", name], "msg": "unknown parameter"} for name in unknown],
        )
    for name in query:
        values = query.getall(name)
        if len(values) > 1:
            raise bad_query(name, "given more than once")
        if len(values[0]) > MAX_PARAM_CHARS or "\x00" in values[0]:
            raise bad_query(name, f"at most {MAX_PARAM_CHARS} characters, no NUL")
    if "limit" in query:
        page_limit(query)


@web.middleware
async def query_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Checks the query of every `/api/v1` request before its handler runs (after authentication)."""
    if request.path.startswith(API_PREFIX):
        check_query(request)
    return await handler(request)
