"""One declaration per route: its handler, method and path, access rule, parameters, bodies and errors.

Each routes module declares its routes by decorating their handlers (`routes = Routes("jobs")`, then
`@routes.get("/api/v1/jobs/{job_id}", Access.USER, "Get a job", responses={200: ok(schemas.Job)})`).
Everything else is derived from these declarations: the aiohttp router (`install`), the access check of the
auth middleware (`RouteTable.access_for`), the query check (`gateway.http.params`), the route table of
docs/api.md (`markdown_table`) and the OpenAPI document (`gateway.openapi`). A route on the router that was
not declared is admin-only (fail closed) and logged, takes no query parameter, and appears in the OpenAPI
document marked `x-undocumented`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NotRequired, TypeVar

from aiohttp import hdrs, web
from typing_extensions import TypedDict, Unpack

from gateway.api_docs import Body, Header
from gateway.http.query import QueryParam
from gateway.security.access import CELLS, Access

logger = logging.getLogger("gateway.auth")

API_PREFIX = "/api/v1/"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Handler)
_VARIABLE = re.compile(r"\{[^}]*\}")
_ID_VARIABLE = re.compile(r"\{(?:\w+_)?id\}")  # `{job_id}` and the like: the docs write `{id}`


def template_key(method: str, path: str) -> tuple[str, str]:
    """A route's key: its variables' names do not matter, and aiohttp's HEAD twin of a GET route is the GET."""
    method = method.upper()
    return ("GET" if method == hdrs.METH_HEAD else method), _VARIABLE.sub("{}", path)


@dataclass(frozen=True, slots=True)
class Route:
    """One route: what serves it, who may call it, and what the OpenAPI document says of it."""

    method: str
    path: str  # the route's template, as the router holds it
    handler: Handler
    access: Access
    summary: str
    tag: str
    responses: Mapping[int, Body]  # the success responses (and any error with a body of its own)
    request: tuple[Body, ...] = ()  # the request bodies it accepts, one per media type
    request_required: bool = True
    query: tuple[QueryParam, ...] = ()  # the query parameters it takes (any other is refused)
    headers: tuple[Header, ...] = ()  # request headers it reads
    path_schemas: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # by variable; default: an id
    errors: tuple[int, ...] = ()  # statuses beyond those its access, body and parameters imply
    description: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return template_key(self.method, self.path)


class Docs(TypedDict):
    """What a declaration says besides its method, path, access and summary (see Route)."""

    responses: Mapping[int, Body]
    request: NotRequired[tuple[Body, ...]]
    request_required: NotRequired[bool]
    query: NotRequired[tuple[QueryParam, ...]]
    headers: NotRequired[tuple[Header, ...]]
    path_schemas: NotRequired[Mapping[str, Mapping[str, Any]]]
    errors: NotRequired[tuple[int, ...]]
    description: NotRequired[str]


class Routes:
    """The routes of one module, in the order they are declared (the router matches in that order)."""

    def __init__(self, tag: str) -> None:
        self.tag = tag  # the OpenAPI tag of every route declared here
        self._routes: list[Route] = []

    def __iter__(self) -> Iterator[Route]:
        return iter(self._routes)

    def _declare(self, method: str, path: str, access: Access, summary: str, docs: Docs) -> Callable[[H], H]:
        def declare(handler: H) -> H:
            route = Route(method, path, handler, access, summary, self.tag, **docs)
            if any(r.key == route.key for r in self._routes):
                raise ValueError(f"{method} {path} is declared twice")
            self._routes.append(route)
            return handler

        return declare

    def get(self, path: str, access: Access, summary: str, **docs: Unpack[Docs]) -> Callable[[H], H]:
        return self._declare(hdrs.METH_GET, path, access, summary, docs)

    def post(self, path: str, access: Access, summary: str, **docs: Unpack[Docs]) -> Callable[[H], H]:
        return self._declare(hdrs.METH_POST, path, access, summary, docs)

    def patch(self, path: str, access: Access, summary: str, **docs: Unpack[Docs]) -> Callable[[H], H]:
        return self._declare(hdrs.METH_PATCH, path, access, summary, docs)

    def delete(self, path: str, access: Access, summary: str, **docs: Unpack[Docs]) -> Callable[[H], H]:
        return self._declare(hdrs.METH_DELETE, path, access, summary, docs)


class RouteTable:
    """Every declared route of an app, found by method and template (as the router holds them).

    Raises:
        ValueError: two declarations of one route (same method, same template whatever its variables' names).
    """

    def __init__(self, routes: Iterable[Route]) -> None:
        self._routes = tuple(routes)
        self._by_key: dict[tuple[str, str], Route] = {}
        for route in self._routes:
            if route.key in self._by_key:
                raise ValueError(f"{route.method} {route.path} is declared twice")
            self._by_key[route.key] = route
        # `find` by the router's own (method, template), as requests ask it: no key to build per request. Only
        # templates the router matched enter, so it holds at most one entry per route and method.
        self._matched: dict[tuple[str, str], Route | None] = {}

    def __iter__(self) -> Iterator[Route]:
        return iter(self._routes)

    def find(self, method: str, template: str) -> Route | None:
        """The declaration of a route, or None when it has none."""
        return self._by_key.get(template_key(method, template))

    def matched(self, request: web.Request) -> Route | None:
        """The declaration of the route the request matched, or None (no match, or a route without one)."""
        info = request.match_info
        resource = info.route.resource if info.http_exception is None else None
        if resource is None:
            return None
        key = (request.method, resource.canonical)
        try:
            return self._matched[key]
        except KeyError:
            route = self._matched[key] = self.find(*key)
            return route

    def access_for(self, request: web.Request) -> Access:
        """What the request's matched route needs. No match: a token under /api/v1 (401 before 404), else
        nothing. A route without a declaration: the admin role, and an error in the log."""
        info = request.match_info
        if info.http_exception is not None:
            return Access.AUTHENTICATED if request.path.startswith(API_PREFIX) else Access.PUBLIC
        resource = info.route.resource
        route = self.matched(request) if resource is not None else self.find(request.method, request.path)
        if route is None:
            template = resource.canonical if resource is not None else request.path
            logger.error("auth.route_without_rule", extra={"method": request.method, "route": template})
            return Access.ADMIN
        return route.access


ROUTE_TABLE: web.AppKey[RouteTable] = web.AppKey("route_table", RouteTable)


def install(app: web.Application, routes: Iterable[Route]) -> None:
    """Put every route on the app's router, in order (a GET with its HEAD twin), and its declarations in
    `app[ROUTE_TABLE]` for the auth middleware and the OpenAPI document."""
    table = app[ROUTE_TABLE] = RouteTable(routes)
    for route in table:
        if route.method == hdrs.METH_GET:
            app.router.add_get(route.path, route.handler)
        else:
            app.router.add_route(route.method, route.path, route.handler)


def markdown_table(routes: Iterable[Route]) -> str:
    """The route-by-role table of docs/api.md, generated so that it cannot drift from the declarations."""
    lines = ["| route | no token | `user` | `admin` |", "|---|---|---|---|"]
    lines += [f"| `{r.method} {_ID_VARIABLE.sub('{id}', r.path)}` | {' | '.join(CELLS[r.access])} |" for r in routes]
    return "\n".join(lines) + "\n"
