"""/health (liveness, no I/O), /ready (pings PostgreSQL and both Redis databases), /metrics.

/metrics is served on the API port in development only; elsewhere it has a listener of its own
(METRICS_HOST:METRICS_PORT, loopback and 9100 unless told), so scraping stays off the public API address.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from gateway import schemas
from gateway.api_docs import Body, ok
from gateway.http.middlewares import security_headers
from gateway.http.responses import json_response
from gateway.keys import CACHE, JOBS_REDIS, METRICS, PG_POOL, SETTINGS
from gateway.routing import Routes
from gateway.security.access import Access
from shared.core.metrics import Metrics
from shared.infra import db, redis
from shared.infra.listen import AddressUnavailable, start_site

routes = Routes("operations")
logger = logging.getLogger("gateway")

# Where the separate /metrics listener listens once started (host, port): port 0 picks a free one.
METRICS_LISTENING = web.AppKey("metrics_listening", tuple)


class MetricsListenerUnavailable(RuntimeError):
    """The configured /metrics address cannot be listened on (its message is one line for a terminal)."""


@routes.get("/health", Access.PUBLIC, "Liveness: the process is alive (no I/O)", responses={200: ok(schemas.Health)})
async def get_health(_: web.Request) -> web.Response:
    """GET /health: the process is alive. No auth."""
    return json_response({"status": "ok"})


def _state(reason: str) -> str:
    # Public: up or down only. Which exception a dependency raised says something about the deployment.
    return "ok" if reason == "ok" else "down"


@routes.get(
    "/ready",
    Access.PUBLIC,
    "Readiness: Redis and PostgreSQL answer",
    responses={
        200: ok(schemas.Readiness, "Every dependency answers"),
        503: ok(schemas.Readiness, "A dependency is down"),
    },
)
async def get_ready(request: web.Request) -> web.Response:
    """GET /ready: 200 when Redis (both databases) and PostgreSQL answer, else 503. No auth; `ok`/`down` only."""
    app = request.app
    cache, jobs, pg = await asyncio.gather(redis.ping(app[CACHE]), redis.ping(app[JOBS_REDIS]), db.ping(app[PG_POOL]))
    redis_reason = cache if cache != "ok" else jobs
    body = {"redis": _state(redis_reason), "postgres": _state(pg)}
    if body != {"redis": "ok", "postgres": "ok"}:  # the why goes to the operator's log, not to the caller
        logger.warning("gateway.not_ready", extra={"redis": redis_reason, "postgres": pg})
        return json_response(body, status=503)
    return json_response(body)


def _render(metrics: Metrics) -> web.Response:
    return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


@routes.get(
    "/metrics",
    Access.PUBLIC,
    "Prometheus metrics: on the API port in development; otherwise on METRICS_HOST:METRICS_PORT (404 here)",
    responses={200: Body("Prometheus text format", media_type="text/plain", schema={"type": "string"})},
)
async def get_metrics(request: web.Request) -> web.Response:
    """GET /metrics: Prometheus text format. No auth. 404 on the API port when it has a listener of its own."""
    if request.app[SETTINGS].metrics_address is not None:
        raise web.HTTPNotFound()
    return _render(request.app[METRICS])


def _metrics_app(metrics: Metrics) -> web.Application:
    async def get_own_metrics(_: web.Request) -> web.Response:
        return _render(metrics)

    app = web.Application()
    app.router.add_get("/metrics", get_own_metrics)
    app.on_response_prepare.append(security_headers)
    return app


async def metrics_listener(app: web.Application) -> AsyncIterator[None]:
    """A cleanup context: the separate /metrics listener, when the settings ask for one.

    Raises:
        MetricsListenerUnavailable: METRICS_HOST:METRICS_PORT is in use (or not one of this host's).
    """
    address = app[SETTINGS].metrics_address
    if address is None:
        yield
        return
    host, port = address
    runner = web.AppRunner(_metrics_app(app[METRICS]), access_log=None)
    await runner.setup()
    try:
        bound = await start_site(runner, host, port, serves="/metrics", settings="METRICS_HOST / METRICS_PORT")
    except AddressUnavailable as exc:
        raise MetricsListenerUnavailable(str(exc)) from None
    app[METRICS_LISTENING] = (host, bound)
    shown = f"[{host}]" if ":" in host else host
    logger.info("gateway.metrics_listening", extra={"url": f"http://{shown}:{bound}/metrics"})
    try:
        yield
    finally:
        await runner.cleanup()
