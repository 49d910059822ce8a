"""Query parameters enforced from the route declarations, and read by the handlers.

Each route declares the parameters it takes (`query=` in gateway.routing, QueryParams of
`gateway.http.query`); a route that declares none takes none. The middleware below checks every `/api/v1`
request against its matched route's declaration before the handler runs: an unknown, repeated, oversized or
NUL-holding parameter, or a value the schema refuses, is a 400. The OpenAPI document publishes the same
declarations.

A typo such as `?stauts=failed` silently ignored would return every job; rejecting it tells the caller at
once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.http.query import DEFAULT_LIMIT, LIMIT, QueryParam
from gateway.routing import API_PREFIX, ROUTE_TABLE, Route
from shared.core.errors import BadRequest

MAX_PARAM_CHARS: Final = 512


def accepted_names(routes: Iterable[Route]) -> dict[tuple[str, str], frozenset[str]]:
    """The names each route that takes parameters accepts, by method and route template."""
    return {(r.method, r.path): frozenset(p.name for p in r.query) for r in routes if r.query}


def bad_query(name: str, msg: str) -> BadRequest:
    return BadRequest(f"query parameter `{name}`: {msg}", errors=[{"loc": ["query", name], "msg": msg}])


def declared(request: web.Request) -> Mapping[str, QueryParam]:
    """The parameters of the matched route, by name (none for a route without a declaration)."""
    route = request.app[ROUTE_TABLE].matched(request)
    return {} if route is None else {p.name: p for p in route.query}


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
