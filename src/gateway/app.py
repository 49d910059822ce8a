"""create_app(settings) -> web.Application: keys, cleanup contexts, middleware order, routes."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from gateway.keys import CACHE, JOBS_REDIS, METRICS, PG_POOL, REGISTRY, SETTINGS
from gateway.middlewares import middlewares
from gateway.routes import setup_routes
from shared import db, queue, redis
from shared.jobs import Registry, builtin_registry
from shared.metrics import Metrics
from shared.settings import GatewaySettings


async def _postgres(app: web.Application) -> AsyncIterator[None]:
    async with db.open_pool(app[SETTINGS].postgres) as pool:
        app[PG_POOL] = pool
        yield


async def _redis(app: web.Application) -> AsyncIterator[None]:
    config = app[SETTINGS].redis
    async with redis.open_cache(config) as cache, queue.open_jobs_redis(config) as jobs:
        app[CACHE] = cache
        app[JOBS_REDIS] = jobs
        yield


def create_app(
    settings: GatewaySettings, *, registry: Registry | None = None, metrics: Metrics | None = None
) -> web.Application:
    """Build the gateway; nothing connects until the app starts (cleanup contexts)."""
    app = web.Application(middlewares=middlewares(), client_max_size=settings.gateway.max_body_bytes)
    app[SETTINGS] = settings
    app[REGISTRY] = registry or builtin_registry()
    app[METRICS] = metrics or Metrics()
    app.cleanup_ctx.extend([_postgres, _redis])
    setup_routes(app)
    return app
