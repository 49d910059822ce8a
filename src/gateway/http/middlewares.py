"""Middleware factories: request id, access log + metrics, problem+json errors, bearer authentication; the
security headers every response carries."""

from __future__ import annotations

import logging
import re
import secrets
import time

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client.metrics import Counter, Histogram
from pydantic import ValidationError

from gateway.http import errors as http_errors
from gateway.http import params
from gateway.http.responses import problem_response
from gateway.keys import METRICS, PG_POOL, PRINCIPAL, REQUEST_ID, SETTINGS
from gateway.routing import ROUTE_TABLE
from gateway.security import ratelimit
from gateway.security.access import Access
from gateway.security.auth import authenticate
from shared.core.errors import DependencyUnavailable, PermissionDenied, RateLimited, ServiceError
from shared.core.logging import request_id_var
from shared.core.metrics import Metrics
from shared.infra.db import UNAVAILABLE_ERRORS

logger = logging.getLogger("gateway.access")
error_logger = logging.getLogger("gateway.errors")

_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

# On every response, whatever its handler set: no MIME sniffing, no framing, no Referer to other sites.
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"}
# Unless the handler set its own: a page that needs a Content-Security-Policy (a dashboard) sends one, which
# should keep `frame-ancestors 'none'`; a static file outside the API may choose its own caching.
DEFAULT_HEADERS = {"Content-Security-Policy": "frame-ancestors 'none'", "Cache-Control": "no-store"}
# Never cached anywhere (a created API key's secret, artifacts, event streams), whatever the handler set.
API_PREFIX = "/api/"


def _route_template(request: web.Request) -> str:
    info = request.match_info
    resource = info.route.resource if info.http_exception is None else None
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Echo a well-formed `X-Request-ID` or mint one; bind it to the logging context."""
    given = request.headers.get("X-Request-ID", "")
    request_id = given if _REQUEST_ID_OK.match(given) else secrets.token_hex(12)
    request[REQUEST_ID] = request_id
    token = request_id_var.set(request_id)
    try:
        response = await handler(request)
        if not response.prepared:  # a stream sets it before its headers go out
            response.headers["X-Request-ID"] = request_id
        return response
    finally:
        request_id_var.reset(token)


# Labelled children kept per middleware (one per app) past which `labels()` is asked each time, as before.
_CHILDREN_MAX = 4096


def access_middleware() -> Middleware:
    """One JSON access line and the request metrics, labelled by route template (never the raw path).

    The labelled children are kept by (metrics, route, method, status): `labels()` takes a lock and builds its
    key on every call, a dict lookup does not.
    """
    children: dict[tuple[Metrics, str, str, int], tuple[Counter, Histogram]] = {}

    def request_metrics(metrics: Metrics, route: str, method: str, status: int) -> tuple[Counter, Histogram]:
        key = (metrics, route, method, status)
        found = children.get(key)
        if found is None:
            found = metrics.http_requests.labels(route, method, str(status)), metrics.http_latency.labels(route, method)
            if len(children) < _CHILDREN_MAX:
                children[key] = found
        return found

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        finally:
            elapsed = time.perf_counter() - started
            route = _route_template(request)
            requests, latency = request_metrics(request.app[METRICS], route, request.method, status)
            requests.inc()
            latency.observe(elapsed)
            if logger.isEnabledFor(logging.INFO):  # the record and its fields cost only when the line is kept
                logger.info(
                    "http.request",
                    extra={
                        "method": request.method, "route": route, "status": status,
                        "duration_ms": round(elapsed * 1000, 2),
                    },
                )  # fmt: skip

    return middleware


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as application/problem+json; a traceback only ever goes to the log."""
    request_id = request.get(REQUEST_ID)
    try:
        return await handler(request)
    except ServiceError as exc:
        status, body = http_errors.from_service_error(exc, request_id)
        headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, RateLimited) else None
        return problem_response(status, body, headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        status, body = http_errors.from_http_exception(exc, request_id)
        allow = exc.headers.get("Allow")
        return problem_response(status, body, {"Allow": allow} if allow else None)
    except UNAVAILABLE_ERRORS as exc:
        error_logger.warning("http.postgres_unavailable", extra={"reason": type(exc).__name__})
        status, body = http_errors.from_service_error(
            DependencyUnavailable("the ledger is unavailable; retry shortly"), request_id
        )
        return problem_response(status, body, {"Retry-After": "5"})
    except ValidationError as exc:
        body = http_errors.problem(
            422, "invalid_input", "the request does not match its schema",
            request_id=request_id, errors_=http_errors.validation_errors(exc),
        )  # fmt: skip
        return problem_response(422, body)
    except Exception:
        error_logger.exception("http.unhandled_error", extra={"route": _route_template(request)})
        status, body = http_errors.internal(request_id)
        return problem_response(status, body)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Apply the matched route's declared access (gateway.routing): authenticate (JWT or API key) unless it
    is public, store the Principal on the request, and refuse a user on an admin route (403)."""
    required = request.app[ROUTE_TABLE].access_for(request)
    if required is not Access.PUBLIC:
        app = request.app
        principal = await authenticate(request.headers.get("Authorization"), app[SETTINGS].auth, app[PG_POOL])
        request[PRINCIPAL] = principal
        if required is Access.ADMIN and not principal.is_admin:
            raise PermissionDenied("this route needs the admin role")
    return await handler(request)


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """An `on_response_prepare` hook: it runs once for every response just before its headers go out, so
    error responses, event streams and file downloads get the headers as well as JSON answers do."""
    headers = response.headers
    headers.update(SECURITY_HEADERS)
    for name, value in DEFAULT_HEADERS.items():
        headers.setdefault(name, value)
    if request.path.startswith(API_PREFIX):
        headers["Cache-Control"] = "no-store"


def middlewares() -> list[Middleware]:
    """In order, outermost first."""
    limits = [ratelimit.auth_failure_middleware(), auth_middleware, ratelimit.principal_rate_middleware()]
    return [request_id_middleware, access_middleware(), error_middleware, *limits, params.query_middleware]
