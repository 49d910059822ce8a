"""GET /api/v1/jobs/{id}/events: the job as a live text/event-stream, fed by Redis pub/sub from any worker."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from gateway.keys import EVENT_HUB, PG_POOL, REQUEST_ID, SETTINGS
from gateway.lookup import job_view, visible_job
from shared import json, ledger

logger = logging.getLogger(__name__)
routes = web.RouteTableDef()

# A client gone away shows up as one of these when the stream next writes.
DISCONNECTED = (ConnectionError,)


async def _send(stream: web.StreamResponse, event: str, data: dict[str, Any]) -> None:
    await stream.write(b"event: " + event.encode() + b"\ndata: " + json.dumps(data) + b"\n\n")


async def _current(app: web.Application, job_id: str) -> dict[str, Any] | None:
    record = await ledger.get_job(app[PG_POOL], job_id)
    return None if record is None else await job_view(app, record)


@routes.get("/api/v1/jobs/{job_id}/events")
async def stream_job_events(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/jobs/{id}/events: owner or admin. `event: job` with the full resource at once and on every
    change of status or progress, `event: end` after a terminal status, a comment every SSE_HEARTBEAT_S.
    Errors (before the stream starts): 401, 404."""
    app = request.app
    record = await visible_job(request)
    with app[EVENT_HUB].listen(record.id) as inbox:
        stream = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
                "X-Request-ID": request[REQUEST_ID],
            }
        )
        await stream.prepare(request)
        try:
            # Read the job again now that we listen: a change made since the check above is not missed.
            view = await _current(app, record.id)
            if view is not None:
                await _follow(app, stream, inbox, view)
        except DISCONNECTED:
            logger.info("events.client_gone", extra={"job_id": record.id})
    return stream


async def _follow(
    app: web.Application, stream: web.StreamResponse, inbox: asyncio.Queue[dict[str, Any]], view: dict[str, Any]
) -> None:
    heartbeat_s = app[SETTINGS].gateway.sse_heartbeat_s
    await _send(stream, "job", view)
    while view["status"] not in ledger.TERMINAL:
        try:
            event = await asyncio.wait_for(inbox.get(), heartbeat_s)
        except TimeoutError:
            await stream.write(b": keepalive\n\n")
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
            await _send(stream, "job", view)
    await _send(stream, "end", {"id": view["id"], "status": view["status"]})
