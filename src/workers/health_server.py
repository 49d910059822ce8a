"""Each worker process's own HTTP endpoint: /health and /metrics on its metrics port."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from shared.core import json
from shared.core.metrics import Metrics
from shared.infra.listen import AddressUnavailable, start_site


class PortUnavailable(RuntimeError):
    """The configured metrics address cannot be listened on (its message is one line for a terminal)."""


@asynccontextmanager
async def serve(metrics: Metrics, host: str, port: int, health: Callable[[], dict[str, Any]]) -> AsyncIterator[int]:
    """Serve until the block exits; yields the bound port (useful with port 0).

    Raises:
        PortUnavailable: `host:port` is in use (or not one of this host's).
    """

    async def get_health(_: web.Request) -> web.Response:
        return web.Response(body=json.dumps({"status": "ok", **health()}), content_type="application/json")

    async def get_metrics(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/health", get_health)
    app.router.add_get("/metrics", get_metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        bound = await start_site(
            runner, host, port, serves="/health and /metrics", settings="WORKER_METRICS_PORT, 0 = any free port"
        )
    except AddressUnavailable as exc:
        raise PortUnavailable(str(exc)) from None
    try:
        yield bound
    finally:
        await runner.cleanup()
