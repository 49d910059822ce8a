"""create_app(settings) -> web.Application: keys, cleanup contexts, middleware order, routes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from gateway.event_hub import EventHub
from gateway.http.middlewares import middlewares, security_headers
from gateway.keys import CACHE, EVENT_HUB, HAND_OVER, INTAKE, JOBS_REDIS, METRICS, PG_POOL, REGISTRY, SEALER, SETTINGS
from gateway.routes import setup_routes
from gateway.routes.health import metrics_listener
from gateway.routes.openapi import build_on_startup
from shared.core.metrics import Metrics
from shared.core.settings import GatewaySettings
from shared.infra import broker, db, redis
from shared.infra.sealing import Sealer
from shared.jobtypes import builtin_registry
from shared.jobtypes.spec import Registry
from shared.ledger.intake import Intake
from shared.ledger.submission import HandOver


async def _postgres(app: web.Application) -> AsyncIterator[None]:
    async with db.open_pool(app[SETTINGS].postgres) as pool:
        app[PG_POOL] = pool
        app[INTAKE] = intake = Intake(pool, cap=app[SETTINGS].security.max_queued_per_owner)
        yield
        await intake.close()


async def _redis(app: web.Application) -> AsyncIterator[None]:
    config = app[SETTINGS].redis
    async with redis.open_cache(config) as cache, broker.open_jobs_redis(config) as jobs:
        app[CACHE] = cache
        app[JOBS_REDIS] = jobs
        app[HAND_OVER] = hand_over = HandOver(jobs, enqueue_timeout_s=app[SETTINGS].gateway.enqueue_timeout_s)
        yield
        await hand_over.close()


async def _event_hub(app: web.Application) -> AsyncIterator[None]:
    hub = app[EVENT_HUB] = EventHub(app[SETTINGS].redis)
    task = asyncio.create_task(hub.run())
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _end_streams(app: web.Application) -> None:
    """On shutdown, end every event stream so the drain does not wait out its grace period on them."""
    app[EVENT_HUB].close()


def create_app(
    settings: GatewaySettings, *, registry: Registry | None = None, metrics: Metrics | None = None
) -> web.Application:
    """Build the gateway; nothing connects until the app starts (cleanup contexts)."""
    app = web.Application(middlewares=middlewares(), client_max_size=settings.gateway.max_body_bytes)
    app[SETTINGS] = settings
    app[REGISTRY] = registry or builtin_registry(settings.job_types)
    app[SEALER] = Sealer.from_config(settings.crypto)
    app[METRICS] = metrics or Metrics()
    # The /metrics listener first: a port that is taken stops the start before any connection is opened.
    app.cleanup_ctx.extend([metrics_listener, _postgres, _redis, _event_hub])
    app.on_shutdown.append(_end_streams)
    app.on_response_prepare.append(security_headers)  # every response, streamed and errors too
    setup_routes(app)
    app.on_startup.append(build_on_startup)  # the OpenAPI document, built once from the finished router
    return app
