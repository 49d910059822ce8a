"""Batches: POST /api/v1/batches (atomic, 1-1000 jobs), GET /api/v1/batches/{id}."""

from __future__ import annotations

from aiohttp import web

from gateway import schemas
from gateway.api_docs import ECHO, json_body, ok
from gateway.http.responses import json_response, read_model
from gateway.keys import JOBS_REDIS, METRICS, PG_POOL, PRINCIPAL, REGISTRY, REQUEST_ID, SEALER, SETTINGS
from gateway.routing import Routes
from gateway.security.access import Access, api_key_id
from gateway.security.ratelimit import guard_queue
from shared.core.errors import NotFound
from shared.core.ids import well_formed_id
from shared.jobtypes.email import submission_context
from shared.ledger import batch_submission, batches, submission

routes = Routes("batches")


@routes.post(
    "/api/v1/batches",
    Access.AUTHENTICATED,
    "Enqueue a batch of jobs atomically",
    responses={202: ok(schemas.BatchCreated, "Every member recorded", "Location")},
    request=json_body(batch_submission.BatchRequest, example={"jobs": [ECHO, ECHO], "on_complete": ECHO}),
    errors=(403,),
)
async def create_batch(request: web.Request) -> web.Response:
    """POST /api/v1/batches: any role. 202 once the batch and every member are committed (all or none).
    Errors: 400, 401, 413, 415, 422 (locations start at `jobs[i]` or `on_complete`; an on_complete takes no
    idempotency key), 429 past MAX_QUEUED_PER_OWNER waiting jobs (the whole batch counts; the on_complete job
    counts when it is made)."""
    body = await read_model(request, batch_submission.BatchRequest)
    app, owner = request.app, request[PRINCIPAL].sub
    batch_id = batches.new_batch_id()
    members = batch_submission.prepare_batch(
        body, app[REGISTRY], sealer=app[SEALER], batch_id=batch_id, owner=owner, request_id=request[REQUEST_ID],
        for_anyone=request[PRINCIPAL].is_admin,
        context=submission_context(app[SETTINGS].mail_policy, admin=request[PRINCIPAL].is_admin),
    )  # fmt: skip
    if body.on_complete is not None:  # stored until the batch completes: its secrets sealed like any job's
        on_complete = submission.sealed_request(body.on_complete, app[REGISTRY], sealer=app[SEALER])
        body = body.model_copy(update={"on_complete": on_complete})
    await guard_queue(request, len(members))
    records = await batch_submission.submit_batch(
        app[PG_POOL], app[JOBS_REDIS], body, members, batch_id=batch_id, owner=owner,
        request_id=request[REQUEST_ID], enqueue_timeout_s=app[SETTINGS].gateway.enqueue_timeout_s,
        created_with_key=api_key_id(request),
    )  # fmt: skip
    for record in records:
        app[METRICS].jobs_enqueued.labels(record.type).inc()
    return json_response(
        {"id": batch_id, "total": len(records), "job_ids": [r.id for r in records]},
        status=202,
        headers={"Location": f"/api/v1/batches/{batch_id}"},
    )


@routes.get("/api/v1/batches/{batch_id}", Access.USER, "Get a batch's progress", responses={200: ok(schemas.Batch)})
async def get_batch(request: web.Request) -> web.Response:
    """GET /api/v1/batches/{id}: the owner or an admin. Errors: 401, 404 (also for another user's batch)."""
    batch_id = request.match_info["batch_id"]
    view = await batches.get(request.app[PG_POOL], batch_id) if well_formed_id(batch_id) else None
    if view is None or not request[PRINCIPAL].can_see(view.owner):
        raise NotFound(f"no batch {batch_id!r}")
    return json_response(view.resource())
