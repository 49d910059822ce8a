"""GET /api/v1/jobs/{id}/events: the job as a live text/event-stream, fed by Redis pub/sub from any worker."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from gateway.api_docs import EVENT_STREAM, Body
from gateway.http import sse
from gateway.http.lookup import job_view
from gateway.http.render import rendered
from gateway.keys import EVENT_HUB, PG_POOL, PRINCIPAL, SETTINGS
from gateway.routing import Routes
from gateway.security.access import Access
from shared.core.errors import NotFound
from shared.core.ids import well_formed_id
from shared.core.status import FINISHED
from shared.ledger import records

logger = logging.getLogger(__name__)
routes = Routes("jobs")

# The resource's fields that can be large (a payload up to MAX_BODY_BYTES, a result up to RESULT_MAX_BYTES).
# A stream holds them as their JSON text, not as objects tens of times larger, and never compares them:
# they change only together with fields of the job's summary.
LARGE = ("payload", "result")


async def _current(app: web.Application, job_id: str) -> tuple[dict[str, Any], records.JobSummary] | None:
    """The whole resource, with its large fields kept encoded, and the summary it was rendered from."""
    record = await records.get_job(app[PG_POOL], job_id)
    if record is None:
        return None
    view = await job_view(app, record)
    return {**view, **{k: rendered(view[k]) for k in LARGE}}, record.summary()


async def _visible_job(request: web.Request) -> records.JobSummary:
    """The job named in the path, if the caller may see it (another owner's job is a 404), without its large
    columns: the stream reads the whole job once it listens."""
    job_id = request.match_info["job_id"]
    summary = await records.get_summary(request.app[PG_POOL], job_id) if well_formed_id(job_id) else None
    if summary is None or not request[PRINCIPAL].can_see(summary.owner):
        raise NotFound(f"no job {job_id!r}")
    return summary


def _visible(view: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in view.items() if k not in LARGE}


@routes.get(
    "/api/v1/jobs/{job_id}/events",
    Access.USER,
    "Follow a job as a live event stream",
    responses={200: Body("`event: job` on each change, `event: end` after a terminal status", media_type=EVENT_STREAM)},
    description="One `event: job` with the resource at once, then one per change of status or progress, "
    "`event: end` after a terminal status; a heartbeat comment every SSE_HEARTBEAT_S.",
)
async def stream_job_events(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/jobs/{id}/events: owner or admin. `event: job` with the full resource at once and on every
    change of status or progress, `event: end` after a terminal status, a comment every SSE_HEARTBEAT_S.
    Errors (before the stream starts): 401, 404, 429 past SSE_MAX_PER_PRINCIPAL open streams."""
    app = request.app
    job_id = (await _visible_job(request)).id
    async with sse.stream_slot(request):
        with app[EVENT_HUB].listen(job_id) as inbox:
            stream = await sse.open_stream(request)
            try:
                # Read the job again now that we listen: a change made since the check above is not missed.
                current = await _current(app, job_id)
                if current is not None:
                    await _follow(app, stream, inbox, *current)
            except sse.DISCONNECTED:
                logger.info("events.client_gone", extra={"job_id": job_id})
    return stream


async def _follow(
    app: web.Application,
    stream: web.StreamResponse,
    inbox: asyncio.Queue[dict[str, Any]],
    view: dict[str, Any],
    seen: records.JobSummary,
) -> None:
    """Send the job on every visible change. A status event or a heartbeat re-reads only the job's summary;
    the whole row is read again only when the summary changed."""
    heartbeat_s = app[SETTINGS].gateway.sse_heartbeat_s
    await sse.send(stream, "job", view)
    while view["status"] not in FINISHED:
        try:
            event = await asyncio.wait_for(inbox.get(), heartbeat_s)
        except TimeoutError:
            await sse.keepalive(stream)
            event = {"kind": "resync"}  # an event lost during a Redis outage is caught up here
        if event["kind"] == "shutdown":
            return  # the gateway is stopping; the client reconnects elsewhere
        if event["kind"] == "progress":
            fresh = {**view, "progress": event["progress"]}
        else:
            summary = await records.get_summary(app[PG_POOL], seen.id)
            if summary is None:
                return  # cleaned away meanwhile
            if summary == seen:
                continue
            current = await _current(app, seen.id)
            if current is None:
                return
            fresh, seen = current
        if _visible(fresh) != _visible(view):
            view = fresh
            await sse.send(stream, "job", view)
    await sse.send(stream, "end", {"id": view["id"], "status": view["status"]})
