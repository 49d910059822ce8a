"""Each worker process's own HTTP endpoint: /health and /metrics on its metrics port."""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from shared import json
from shared.metrics import Metrics

# What only bind() says: the address is taken, or is not one of this host's.
_BIND_ERRORS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL})


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
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        if exc.errno not in _BIND_ERRORS:
            raise
        reason = os.strerror(exc.errno).lower()
        raise PortUnavailable(
            f"cannot serve /health and /metrics on {host}:{port}: {reason} (set WORKER_METRICS_PORT, 0 = any free port)"
        ) from None
    try:
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        yield int(sockets[0].getsockname()[1]) if sockets else port
    finally:
        await runner.cleanup()
