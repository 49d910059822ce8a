"""Queue administration (admin only, by gateway.security.access): stats, pause/resume, clean, retry-failed,
health alerts."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from gateway import schemas
from gateway.api_docs import json_body, ok
from gateway.http.responses import json_response, read_model
from gateway.keys import JOBS_REDIS, PG_POOL, SETTINGS
from gateway.routing import Routes
from gateway.security.access import Access
from shared.core.errors import DependencyUnavailable, NotFound
from shared.core.status import FINISHED, Finished
from shared.infra import broker
from shared.infra.redis import REDIS_ERRORS
from shared.jobtypes.spec import Queue
from shared.ledger import owner_caps, pause, queue_state, records, submission

routes = Routes("queues")
QUEUE_PATH = {"name": {"type": "string", "enum": [q.value for q in Queue], "description": "A queue name."}}
CLEAN = {"older_than_s": 604800, "statuses": list(FINISHED)}

QUEUE_NAMES = tuple(q.value for q in Queue)


class CleanRequest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    older_than_s: float = Field(7 * 24 * 3600, ge=0, le=100 * 365 * 24 * 3600)
    statuses: list[Finished] = Field(default_factory=lambda: list(FINISHED), min_length=1)


def _queue_name(request: web.Request) -> str:
    name = request.match_info["name"]
    if name not in QUEUE_NAMES:
        raise NotFound(f"no queue {name!r}; queues: {', '.join(QUEUE_NAMES)}")
    return name


async def _resources(request: web.Request, names: tuple[str, ...]) -> list[dict[str, Any]]:
    app = request.app
    found = await queue_state.counts(app[PG_POOL], names)
    result = []
    for entry in found:
        try:
            workers: int | None = await broker.live_workers(app[JOBS_REDIS], entry.name, ttl_s=broker.WORKER_TTL_S)
        except REDIS_ERRORS:
            workers = None  # unknown while Redis is down; the ledger counts still stand
        result.append(
            {
                "name": entry.name,
                **entry.by_status,
                "waiting": entry.waiting,
                "paused": entry.paused,
                "workers": workers,
                "oldest_queued_age_s": entry.oldest_queued_age_s,
            }
        )
    return result


@routes.get("/api/v1/queues", Access.ADMIN, "Queue statistics", responses={200: ok(schemas.QueueList)})
async def list_queues(request: web.Request) -> web.Response:
    """GET /api/v1/queues: admin. Errors: 401, 403."""
    return json_response({"items": await _resources(request, QUEUE_NAMES)})


@routes.get(
    "/api/v1/queues/health",
    Access.ADMIN,
    "Queue alerts by the QUEUE_ALERT_* thresholds",
    responses={200: ok(schemas.QueueHealth)},
)
async def get_queues_health(request: web.Request) -> web.Response:
    """GET /api/v1/queues/health: admin; alerts by the QUEUE_ALERT_* thresholds. Errors: 401, 403."""
    config = request.app[SETTINGS].gateway
    alerts: list[dict[str, str]] = []
    for item in await _resources(request, QUEUE_NAMES):
        name = item["name"]
        if item["workers"] == 0:
            alerts.append({"queue": name, "severity": "critical", "message": "no live worker"})
        if item["failed"] > config.alert_failed:
            alerts.append({"queue": name, "severity": "warning", "message": f"{item['failed']} failed jobs"})
        if item["waiting"] > config.alert_queued:
            alerts.append({"queue": name, "severity": "warning", "message": f"{item['waiting']} jobs waiting"})
    return json_response({"healthy": not alerts, "alerts": alerts})


@routes.get(
    "/api/v1/queues/{name}",
    Access.ADMIN,
    "One queue's statistics",
    responses={200: ok(schemas.QueueStats)},
    path_schemas=QUEUE_PATH,
)
async def get_queue(request: web.Request) -> web.Response:
    """GET /api/v1/queues/{name}: admin. Errors: 401, 403, 404."""
    return json_response((await _resources(request, (_queue_name(request),)))[0])


async def _set_paused(request: web.Request, paused: bool) -> web.Response:
    """Record the flag in the ledger, then close or open the queue's start gate before answering.

    Once a pause has answered 200 no job of the queue starts on any worker: the claim checks the gate.

    Raises:
        DependencyUnavailable: Redis did not take the gate; the ledger keeps the flag and workers copy it
            to the gate as soon as Redis answers (a worker cannot start a job without Redis either).
    """
    app, name = request.app, _queue_name(request)
    try:
        await pause.set_paused(app[PG_POOL], app[JOBS_REDIS], name, paused)
    except REDIS_ERRORS as exc:
        what = "pause" if paused else "resume"
        raise DependencyUnavailable(
            f"the {what} is recorded, but Redis did not confirm it; it takes effect once Redis answers"
        ) from exc
    return json_response((await _resources(request, (name,)))[0])


@routes.post(
    "/api/v1/queues/{name}/pause",
    Access.ADMIN,
    "Pause a queue: once this answers 200 no new job of it starts on any worker; enqueueing still works",
    responses={200: ok(schemas.QueueStats)},
    path_schemas=QUEUE_PATH,
    errors=(409,),
)
async def pause_queue(request: web.Request) -> web.Response:
    """POST /api/v1/queues/{name}/pause: admin; no new job of the queue starts, enqueueing still works."""
    return await _set_paused(request, True)


@routes.post(
    "/api/v1/queues/{name}/resume",
    Access.ADMIN,
    "Resume a queue",
    responses={200: ok(schemas.QueueStats)},
    path_schemas=QUEUE_PATH,
    errors=(409,),
)
async def resume_queue(request: web.Request) -> web.Response:
    """POST /api/v1/queues/{name}/resume: admin."""
    return await _set_paused(request, False)


@routes.post(
    "/api/v1/queues/{name}/clean",
    Access.ADMIN,
    "Remove finished jobs of a queue",
    responses={200: ok(schemas.Cleaned)},
    path_schemas=QUEUE_PATH,
    request=json_body(CleanRequest, "Which finished jobs to remove (the defaults when no body is sent).", CLEAN),
    request_required=False,
)
async def clean_queue(request: web.Request) -> web.Response:
    """POST /api/v1/queues/{name}/clean: admin; removes finished jobs from the ledger and Redis.
    Errors: 400, 401, 403, 404, 415, 422."""
    name = _queue_name(request)
    body = await read_model(request, CleanRequest) if request.can_read_body else CleanRequest()
    removed, drop = 0, True
    pages = queue_state.clean(request.app[PG_POOL], name, statuses=body.statuses, older_than_s=body.older_than_s)
    async for arq_ids in pages:
        removed += len(arq_ids)
        if drop:
            try:
                await broker.drop_results(request.app[JOBS_REDIS], arq_ids)
            except REDIS_ERRORS:  # arq's copies expire with RESULT_TTL_S anyway: Redis is not waited for
                drop = False
    return json_response({"removed": removed})


@routes.post(
    "/api/v1/queues/{name}/retry-failed",
    Access.ADMIN,
    "Retry every failed job of a queue",
    responses={200: ok(schemas.RetriedFailed)},
    path_schemas=QUEUE_PATH,
)
async def retry_failed(request: web.Request) -> web.Response:
    """POST /api/v1/queues/{name}/retry-failed: admin; every failed job of the queue, attempts from 0, as far
    as each owner's MAX_QUEUED_PER_OWNER allows (a retried job waits like a new one): the jobs that do not
    fit stay failed and are counted in `skipped`, to be retried once their owners' queues have drained.

    A page of jobs at a time (`queue_state.RETRY_PAGE`), oldest failure first: each reset job is re-enqueued
    whole, so what the request holds is a page of them, however many failed. Each page's room is read
    after the pages before it were queued, so the cap holds across pages."""
    app = request.app
    pool, cap = app[PG_POOL], app[SETTINGS].security.max_queued_per_owner
    retried = skipped = 0
    async for ids in queue_state.failed_pages(pool, _queue_name(request)):
        fitting, over = await owner_caps.within_room(pool, ids, cap=cap)
        reset = await records.reset_for_retry(pool, fitting)
        await submission.resubmit(app[JOBS_REDIS], reset, enqueue_timeout_s=app[SETTINGS].gateway.enqueue_timeout_s)
        retried, skipped = retried + len(reset), skipped + over
    return json_response({"retried": retried, "skipped": skipped})
