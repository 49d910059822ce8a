"""Who may call each route: one declarative table, enforced in one place (the auth middleware).

A route the table does not name is admin-only (fail closed) and logged; tests/integration/test_access.py
fails for it too, so a new route cannot ship without a decision here.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from enum import Enum

from aiohttp import web

from shared.accounts import api_keys

logger = logging.getLogger("gateway.auth")

API_PREFIX = "/api/v1/"


class Access(Enum):
    PUBLIC = "public"  # no token needed
    AUTHENTICATED = "authenticated"  # any valid token; reads nothing owned, or creates a resource of the caller
    USER = "user"  # any valid token; a user reaches its own resources (others' are 404), an admin everyone's
    OWN = "own"  # any valid token; the caller's own resources only, an admin's too (a personal stream)
    ADMIN = "admin"  # the admin role only (403 for a user)


@dataclass(frozen=True, slots=True)
class Rule:
    method: str
    path: str  # the route's template; variable names do not matter for matching
    access: Access


_P, _A, _U, _OWN, _ADMIN = Access.PUBLIC, Access.AUTHENTICATED, Access.USER, Access.OWN, Access.ADMIN

RULES: tuple[Rule, ...] = tuple(
    Rule(method, path, access)
    for method, path, access in (
        ("GET", "/", _P),
        ("GET", "/health", _P),
        ("GET", "/ready", _P),
        ("GET", "/metrics", _P),
        ("GET", "/api/v1/openapi.json", _P),
        ("GET", "/api/v1/job-types", _A),
        ("POST", "/api/v1/jobs", _A),
        ("GET", "/api/v1/jobs", _U),
        ("GET", "/api/v1/jobs/{id}", _U),
        ("POST", "/api/v1/jobs/{id}/cancel", _U),
        ("POST", "/api/v1/jobs/{id}/retry", _U),
        ("GET", "/api/v1/jobs/{id}/events", _U),
        ("POST", "/api/v1/batches", _A),
        ("GET", "/api/v1/batches/{id}", _U),
        ("POST", "/api/v1/schedules", _A),
        ("GET", "/api/v1/schedules", _U),
        ("GET", "/api/v1/schedules/{id}", _U),
        ("PATCH", "/api/v1/schedules/{id}", _U),
        ("DELETE", "/api/v1/schedules/{id}", _U),
        ("POST", "/api/v1/uploads", _A),
        ("GET", "/api/v1/uploads", _U),
        ("GET", "/api/v1/uploads/{id}", _U),
        ("DELETE", "/api/v1/uploads/{id}", _U),
        ("GET", "/api/v1/artifacts/{id}", _U),
        ("DELETE", "/api/v1/artifacts/{id}", _U),
        ("GET", "/api/v1/notifications", _U),
        ("POST", "/api/v1/notifications/{id}/read", _U),
        ("GET", "/api/v1/notifications/stream", _OWN),
        ("GET", "/api/v1/queues", _ADMIN),
        ("GET", "/api/v1/queues/health", _ADMIN),
        ("GET", "/api/v1/queues/{name}", _ADMIN),
        ("POST", "/api/v1/queues/{name}/pause", _ADMIN),
        ("POST", "/api/v1/queues/{name}/resume", _ADMIN),
        ("POST", "/api/v1/queues/{name}/clean", _ADMIN),
        ("POST", "/api/v1/queues/{name}/retry-failed", _ADMIN),
        ("POST", "/api/v1/api-keys", _ADMIN),
        ("GET", "/api/v1/api-keys", _ADMIN),
        ("DELETE", "/api/v1/api-keys/{id}", _ADMIN),
        ("GET", "/api/v1/webhook-signing-key", _U),
    )
)

_VARIABLE = re.compile(r"\{[^}]*\}")


def _key(method: str, path: str) -> tuple[str, str]:
    # aiohttp adds a HEAD route beside every GET one; it is the same read.
    return ("GET" if method == "HEAD" else method), _VARIABLE.sub("{}", path)


_BY_ROUTE: dict[tuple[str, str], Access] = {_key(r.method, r.path): r.access for r in RULES}


@functools.lru_cache(maxsize=1024)  # keyed by route templates, a small fixed set; spares a regex per request
def required_access(method: str, template: str) -> Access | None:
    """The rule for a route (method and template as aiohttp's router holds them), or None if it has none."""
    return _BY_ROUTE.get(_key(method, template))


def for_request(request: web.Request) -> Access:
    """What the request's matched route needs. No match: a token under /api/v1 (401 before 404), else nothing."""
    info = request.match_info
    if info.http_exception is not None:
        return Access.AUTHENTICATED if request.path.startswith(API_PREFIX) else Access.PUBLIC
    resource = info.route.resource
    template = resource.canonical if resource is not None else request.path
    access = required_access(request.method, template)
    if access is None:
        logger.error("auth.route_without_rule", extra={"method": request.method, "route": template})
        return Access.ADMIN
    return access


_CELLS: dict[Access, tuple[str, str, str]] = {
    Access.PUBLIC: ("yes", "yes", "yes"),
    Access.AUTHENTICATED: ("401", "yes", "yes"),
    Access.USER: ("401", "own", "all"),
    Access.OWN: ("401", "own", "own"),
    Access.ADMIN: ("401", "403", "yes"),
}


def markdown_table() -> str:
    """The route-by-role table of the README, generated so that it cannot drift from the rules."""
    lines = ["| route | no token | `user` | `admin` |", "|---|---|---|---|"]
    lines += [f"| `{r.method} {r.path}` | {' | '.join(_CELLS[r.access])} |" for r in RULES]
    return "\n".join(lines) + "\n"


def api_key_id(request: web.Request) -> str | None:
    """The API key an authenticated request was made with (the auth middleware verified it), None for a JWT.

    Stored with work that runs later as its owner, whose standing is then checked again.
    """
    _, _, token = request.headers.get("Authorization", "").partition(" ")
    return api_keys.key_id(token.strip())
