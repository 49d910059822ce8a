"""/health (liveness, no I/O), /ready (pings PostgreSQL and both Redis databases), /metrics."""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.keys import CACHE, JOBS_REDIS, METRICS, PG_POOL
from gateway.responses import json_response
from shared import db, redis

routes = web.RouteTableDef()


@routes.get("/health")
async def get_health(_: web.Request) -> web.Response:
    """GET /health: the process is alive. No auth."""
    return json_response({"status": "ok"})


@routes.get("/ready")
async def get_ready(request: web.Request) -> web.Response:
    """GET /ready: 200 when Redis (both databases) and PostgreSQL answer, else 503. No auth."""
    app = request.app
    cache, jobs, pg = await asyncio.gather(redis.ping(app[CACHE]), redis.ping(app[JOBS_REDIS]), db.ping(app[PG_POOL]))
    redis_state = cache if cache != "ok" else jobs
    body = {"redis": redis_state, "postgres": pg}
    return json_response(body, status=200 if redis_state == "ok" and pg == "ok" else 503)


@routes.get("/metrics")
async def get_metrics(request: web.Request) -> web.Response:
    """GET /metrics: Prometheus text format. No auth."""
    return web.Response(body=request.app[METRICS].render(), headers={"Content-Type": CONTENT_TYPE_LATEST})
