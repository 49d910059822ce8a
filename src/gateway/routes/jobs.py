"""Enqueue a job and read jobs: POST/GET /api/v1/jobs, GET /api/v1/jobs/{id}."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Final, get_args

from aiohttp import web

from gateway import schemas
from gateway.api_docs import ECHO, Header, json_body, ok
from gateway.http.lookup import job_view, running_progress, visible_job
from gateway.http.params import page
from gateway.http.query import PAGE, QueryParam
from gateway.http.resources import job_resource, job_summary, job_url
from gateway.http.responses import json_response, read_json, validate_body
from gateway.keys import (
    CACHE,
    HAND_OVER,
    INTAKE,
    JOBS_REDIS,
    METRICS,
    PG_POOL,
    PRINCIPAL,
    REGISTRY,
    REQUEST_ID,
    SEALER,
    SETTINGS,
)
from gateway.routing import Routes
from gateway.security.access import Access
from gateway.security.ratelimit import guard_queue
from shared.core.errors import Conflict, InvalidInput
from shared.core.ids import MAX_ID_CHARS
from shared.core.status import Finished, JobStatus
from shared.infra import broker, events
from shared.infra.redis import REDIS_ERRORS
from shared.jobtypes.email import submission_context
from shared.ledger import batch_submission, owner_caps, records, submission

logger = logging.getLogger(__name__)
routes = Routes("jobs")
# The statuses a job can be retried from (as `records.reset_for_retry` has them).
RETRIABLE: Final[tuple[Finished, ...]] = ("failed", "cancelled")
IDEMPOTENCY_KEY = Header(
    "Idempotency-Key",
    {"type": "string", "minLength": 1, "maxLength": 255},
    "Same as `idempotency_key` in the body (given both, they must be equal, else 422): a repeat within 24 h"
    " returns the original job (200).",
)


@routes.post(
    "/api/v1/jobs",
    Access.AUTHENTICATED,
    "Enqueue a job",
    responses={
        202: ok(schemas.Job, "Recorded durably; queued or scheduled", "Location"),
        200: ok(schemas.Job, "Idempotent replay: the original job", "Location", "Idempotent-Replayed"),
    },
    request=json_body(submission.JobRequest, "A job request; `payload` follows the schema of its `type`.", ECHO),
    headers=(IDEMPOTENCY_KEY,),
    errors=(403, 409),
)
async def create_job(request: web.Request) -> web.Response:
    """POST /api/v1/jobs: any role. 202 once the job is committed to the ledger; 200 on an idempotent replay.

    Errors: 400 malformed JSON, 401, 409 idempotency key reused for another request, 413, 415, 422,
    429 past MAX_QUEUED_PER_OWNER waiting jobs.
    """
    body = await read_json(request)
    header_key = request.headers.get("Idempotency-Key")
    if header_key is not None and body.get("idempotency_key") is None:
        body["idempotency_key"] = header_key
    if header_key is not None and body["idempotency_key"] != header_key:
        raise InvalidInput(
            "the Idempotency-Key header and the `idempotency_key` field differ",
            errors=[
                {
                    "loc": ["idempotency_key"],
                    "msg": "differs from the Idempotency-Key header",
                    "type": "value_error",
                }
            ],
        )
    job_request = validate_body(submission.JobRequest, body)
    app, principal = request.app, request[PRINCIPAL]
    new = submission.prepare(
        job_request, app[REGISTRY], sealer=app[SEALER], owner=principal.sub, request_id=request[REQUEST_ID],
        for_anyone=principal.is_admin, context=submission_context(app[SETTINGS].mail_policy, admin=principal.is_admin),
    )  # fmt: skip
    try:
        # Shares one INSERT (and one count per owner for the queue cap) with the requests arriving meanwhile.
        record, created = await app[INTAKE].record(new)
    except owner_caps.QueueFull:
        app[METRICS].rate_limited.labels("queue_cap").inc()
        raise
    headers = {"Location": job_url(record.id)}
    if not created:
        headers["Idempotent-Replayed"] = "true"
        return json_response(job_resource(record), status=200, headers=headers)
    app[METRICS].jobs_enqueued.labels(record.type).inc()
    if not await app[HAND_OVER].enqueue(record):  # with the other requests' jobs, in one call
        app[METRICS].enqueue_deferred.inc()
    return json_response(job_resource(record), status=202, headers=headers)


@routes.get("/api/v1/jobs/{job_id}", Access.USER, "Get a job", responses={200: ok(schemas.Job)})
async def get_job(request: web.Request) -> web.Response:
    """GET /api/v1/jobs/{id}: the owner or an admin. Errors: 401, 404 (also for another user's job)."""
    return json_response(await job_view(request.app, await visible_job(request)))


@routes.post(
    "/api/v1/jobs/{job_id}/cancel",
    Access.USER,
    "Cancel a job",
    responses={200: ok(schemas.Job, "Cancelled")},
    errors=(409,),
)
async def cancel_job(request: web.Request) -> web.Response:
    """POST /api/v1/jobs/{id}/cancel: the owner or an admin. A job not yet started never starts; a running
    one is interrupted (its handler sees CancelledError). Errors: 401, 404, 409 when already finished."""
    record = await visible_job(request)
    cancelled = await records.cancel(request.app[PG_POOL], record.id)
    if cancelled is None:
        raise Conflict(f"the job is already {record.status}", details={"status": record.status})
    job, before = cancelled
    try:
        await broker.withdraw(request.app[JOBS_REDIS], job, running=before == "running")
    except REDIS_ERRORS as exc:
        # The ledger already says cancelled: a worker that picks the job up skips it.
        logger.warning("job.withdraw_failed", extra={"job_id": job.id, "reason": type(exc).__name__})
    await _announce(request, job.id, "cancelled")
    if job.batch_id is not None:
        app = request.app
        await batch_submission.complete_batch(
            app[PG_POOL], app[JOBS_REDIS], app[REGISTRY], job.batch_id, sealer=app[SEALER],
            enqueue_timeout_s=app[SETTINGS].gateway.enqueue_timeout_s,
            queue_cap=app[SETTINGS].security.max_queued_per_owner,
        )  # fmt: skip
    return json_response(job_resource(job))


@routes.post(
    "/api/v1/jobs/{job_id}/retry",
    Access.USER,
    "Retry a failed or cancelled job",
    responses={202: ok(schemas.Job, "Queued again, attempts from 0", "Location")},
    errors=(409,),
)
async def retry_job(request: web.Request) -> web.Response:
    """POST /api/v1/jobs/{id}/retry: the owner or an admin; only failed or cancelled jobs, attempts from 0.
    Errors: 401, 404, 409 for any other status."""
    record = await visible_job(request)
    app = request.app
    if record.status in RETRIABLE:  # a retry makes a waiting job: it counts against the cap
        await guard_queue(request, 1, owner=record.owner)
    reset = await records.reset_for_retry(app[PG_POOL], [record.id])
    if not reset:
        raise Conflict(
            f"only failed or cancelled jobs can be retried; this one is {record.status}",
            details={"status": record.status},
        )
    await submission.resubmit(app[JOBS_REDIS], reset, enqueue_timeout_s=app[SETTINGS].gateway.enqueue_timeout_s)
    await _announce(request, record.id, "queued")
    return json_response(job_resource(reset[0]), status=202, headers={"Location": job_url(record.id)})


async def _announce(request: web.Request, job_id: str, status: str) -> None:
    """Tell event streams (on any gateway) that the job changed; best effort."""
    try:
        await events.publish_status(request.app[CACHE], job_id, status)
    except REDIS_ERRORS as exc:
        logger.warning("job.announce_failed", extra={"job_id": job_id, "reason": type(exc).__name__})


FILTERS: Final = (
    QueryParam("status", {"type": "string", "enum": list(get_args(JobStatus))}, "Only jobs in this status."),
    QueryParam("type", {"type": "string", "maxLength": 100}, "Only jobs of this type."),
    QueryParam("queue", {"type": "string", "maxLength": 100}, "Only jobs of this queue."),
    QueryParam("batch_id", {"type": "string", "maxLength": MAX_ID_CHARS}, "Only the members of this batch."),
)


def _query(params: Mapping[str, str]) -> tuple[records.JobFilter, int, str | None]:
    """The list's filters, already checked against their declarations by `gateway.http.params`."""
    where = records.JobFilter(
        status=params.get("status"), type=params.get("type"), queue=params.get("queue"), batch_id=params.get("batch_id")
    )
    return where, *page(params)


@routes.get(
    "/api/v1/jobs",
    Access.USER,
    "List jobs, newest first",
    query=(*FILTERS, *PAGE),
    responses={200: ok(schemas.JobList)},
    description="A user sees its own jobs, an admin every job. Each item is the job without `payload`, `result` and "
    "`errors`: GET its `links.self` for them. Unknown query parameters are a 400.",
)
async def list_jobs(request: web.Request) -> web.Response:
    """GET /api/v1/jobs: newest first, each job without `payload`, `result` and `errors` (its `links.self` has
    them), so a page stays small whatever its jobs hold; a user sees its own jobs, an admin every job.
    Errors: 400, 401."""
    where, limit, cursor = _query(request.query)
    principal = request[PRINCIPAL]
    if not principal.is_admin:
        where = dataclasses.replace(where, owner=principal.sub)
    page, next_cursor = await records.list_jobs(request.app[PG_POOL], where, limit=limit, cursor=cursor)
    return json_response({"items": await _summaries(request.app, page), "next_cursor": next_cursor})


async def _summaries(app: web.Application, jobs: Sequence[records.JobSummary]) -> list[dict[str, Any]]:
    """List items: each job as its resource shows it, less `payload`, `result` and `errors` (GET the job for
    those), with the progress of running jobs (from the cache; left out while it is down)."""
    progress = await running_progress(app, jobs)
    return [job_summary(j, progress=progress.get(j.id)) for j in jobs]
