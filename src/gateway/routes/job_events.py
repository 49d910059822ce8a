"""GET /api/v1/jobs/{id}/events: the job as a live text/event-stream, fed by Redis pub/sub from any worker."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from gateway import sse
from gateway.keys import EVENT_HUB, PG_POOL, SETTINGS
from gateway.lookup import job_view, visible_job
from shared import ledger

logger = logging.getLogger(__name__)
routes = web.RouteTableDef()


async def _current(app: web.Application, job_id: str) -> dict[str, Any] | None:
    record = await ledger.get_job(app[PG_POOL], job_id)
    return None if record is None else await job_view(app, record)


@routes.get("/api/v1/jobs/{job_id}/events")
async def stream_job_events(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/jobs/{id}/events: owner or admin. `event: job` with the full resource at once and on every
    change of status or progress, `event: end` after a terminal status, a comment every SSE_HEARTBEAT_S.
    Errors (before the stream starts): 401, 404, 429 past SSE_MAX_PER_PRINCIPAL open streams."""
    app = request.app
    record = await visible_job(request)
    async with sse.stream_slot(request):
        with app[EVENT_HUB].listen(record.id) as inbox:
            stream = await sse.open_stream(request)
            try:
                # Read the job again now that we listen: a change made since the check above is not missed.
                view = await _current(app, record.id)
                if view is not None:
                    await _follow(app, stream, inbox, view)
            except sse.DISCONNECTED:
                logger.info("events.client_gone", extra={"job_id": record.id})
    return stream


async def _follow(
    app: web.Application, stream: web.StreamResponse, inbox: asyncio.Queue[dict[str, Any]], view: dict[str, Any]
) -> None:
    heartbeat_s = app[SETTINGS].gateway.sse_heartbeat_s
    await sse.send(stream, "job", view)
    while view["status"] not in ledger.TERMINAL:
        try:
            event = await asyncio.wait_for(inbox.get(), heartbeat_s)
        except TimeoutError:
            await sse.keepalive(stream)
            event = {"kind": "resync"}  # an event lost during a Redis outage is caught up here
        if event["kind"] == "shutdown":
            return  # the gateway is stopping; the client reconnects elsewhere
        if event["kind"] == "progress":
            fresh: dict[str, Any] | None = {**view, "progress": event["progress"]}
        else:
            fresh = await _current(app, view["id"])
        if fresh is None:
            return  # cleaned away meanwhile
        if fresh != view:
            view = fresh
            await sse.send(stream, "job", view)
    await sse.send(stream, "end", {"id": view["id"], "status": view["status"]})
