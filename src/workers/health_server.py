"""Each worker process's own HTTP endpoint: /health and /metrics on its metrics port."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from shared import json
from shared.metrics import Metrics


@asynccontextmanager
async def serve(metrics: Metrics, host: str, port: int, health: Callable[[], dict[str, Any]]) -> AsyncIterator[int]:
    """Serve until the block exits; yields the bound port (useful with port 0)."""

    async def get_health(_: web.Request) -> web.Response:
        return web.Response(body=json.dumps({"status": "ok", **health()}), content_type="application/json")

    async def get_metrics(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/health", get_health)
    app.router.add_get("/metrics", get_metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    try:
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        yield int(sockets[0].getsockname()[1]) if sockets else port
    finally:
        await runner.cleanup()
