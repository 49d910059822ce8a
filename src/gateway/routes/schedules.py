"""Recurring jobs: POST/GET /api/v1/schedules, GET/PATCH/DELETE /api/v1/schedules/{id}."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway import schemas
from gateway.api_docs import ECHO, NO_CONTENT, json_body, ok
from gateway.http.params import page
from gateway.http.query import PAGE
from gateway.http.responses import json_response, read_model
from gateway.keys import PG_POOL, PRINCIPAL, REGISTRY, REQUEST_ID, SEALER, SETTINGS
from gateway.routing import Routes
from gateway.security.access import Access, api_key_id
from shared.core.errors import InvalidInput, NotFound
from shared.core.ids import well_formed_id
from shared.core.json import rfc3339
from shared.infra.sealing import redact
from shared.jobtypes.email import submission_context
from shared.ledger import schedules, submission

routes = Routes("schedules")
SCHEDULE = {"name": "nightly-echo", "cron": "0 2 * * *", "timezone": "Europe/Paris", "job": ECHO}


def _resource(s: schedules.Schedule) -> dict[str, Any]:
    return {
        "id": s.id, "name": s.name, "cron": s.cron, "timezone": s.timezone,
        "job": {**s.job, "payload": redact(s.job.get("payload") or {})},
        "start_at": rfc3339(s.start_at), "end_at": rfc3339(s.end_at), "enabled": s.enabled, "overlap": s.overlap,
        "next_run_at": rfc3339(s.next_run_at), "last_run_at": rfc3339(s.last_run_at), "last_job_id": s.last_job_id,
        "last_skipped_at": rfc3339(s.last_skipped_at), "last_skip_reason": s.last_skip_reason,
        "disabled_reason": s.disabled_reason,
        "created_at": rfc3339(s.created_at), "updated_at": rfc3339(s.updated_at),
        "links": {"self": f"/api/v1/schedules/{s.id}"},
    }  # fmt: skip


def _checked_job(request: web.Request, job: submission.KeylessJobRequest, owner: str) -> submission.KeylessJobRequest:
    """The scheduled job must be one that `POST /jobs` would accept now (type, payload, timeout); it is
    stored with its secret fields sealed."""
    app = request.app
    try:
        submission.prepare(
            job, app[REGISTRY], sealer=app[SEALER], owner=owner, request_id=request[REQUEST_ID],
            for_anyone=request[PRINCIPAL].is_admin,
            context=submission_context(app[SETTINGS].mail_policy, admin=request[PRINCIPAL].is_admin),
        )  # fmt: skip
    except InvalidInput as exc:
        raise InvalidInput(exc.message, errors=[{**e, "loc": ["job", *e["loc"]]} for e in exc.errors or []]) from exc
    return submission.sealed_request(job, app[REGISTRY], sealer=app[SEALER])


async def _visible(request: web.Request) -> schedules.Schedule:
    schedule_id = request.match_info["schedule_id"]
    found = await schedules.get(request.app[PG_POOL], schedule_id) if well_formed_id(schedule_id) else None
    if found is None or not request[PRINCIPAL].can_see(found.owner):
        raise NotFound(f"no schedule {schedule_id!r}")
    return found


@routes.post(
    "/api/v1/schedules",
    Access.AUTHENTICATED,
    "Create a schedule",
    responses={201: ok(schemas.Schedule, "Created", "Location")},
    request=json_body(schedules.ScheduleRequest, example=SCHEDULE),
    errors=(403, 409),
)
async def create_schedule(request: web.Request) -> web.Response:
    """POST /api/v1/schedules: any role. Errors: 400, 401, 409 (`conflict`: name taken by this owner;
    `schedule_limit_reached`: the owner has MAX_SCHEDULES_PER_OWNER already), 415, 422."""
    body = await read_model(request, schedules.ScheduleRequest)
    owner = request[PRINCIPAL].sub
    body = body.model_copy(update={"job": _checked_job(request, body.job, owner)})
    created = await schedules.create(
        request.app[PG_POOL], owner, body, cap=request.app[SETTINGS].security.max_schedules_per_owner,
        created_with_key=api_key_id(request),
    )  # fmt: skip
    return json_response(_resource(created), status=201, headers={"Location": f"/api/v1/schedules/{created.id}"})


@routes.get("/api/v1/schedules", Access.USER, "List schedules", query=PAGE, responses={200: ok(schemas.ScheduleList)})
async def list_schedules(request: web.Request) -> web.Response:
    """GET /api/v1/schedules: a user's own (an admin's: all), newest first, paginated. Errors: 400, 401."""
    limit, cursor = page(request.query)
    principal = request[PRINCIPAL]
    found, next_cursor = await schedules.list_for(
        request.app[PG_POOL], None if principal.is_admin else principal.sub, limit=limit, cursor=cursor
    )
    return json_response({"items": [_resource(s) for s in found], "next_cursor": next_cursor})


@routes.get("/api/v1/schedules/{schedule_id}", Access.USER, "Get a schedule", responses={200: ok(schemas.Schedule)})
async def get_schedule(request: web.Request) -> web.Response:
    """GET /api/v1/schedules/{id}: owner or admin. Errors: 401, 404."""
    return json_response(_resource(await _visible(request)))


@routes.patch(
    "/api/v1/schedules/{schedule_id}",
    Access.USER,
    "Change a schedule",
    responses={200: ok(schemas.Schedule)},
    request=json_body(schedules.SchedulePatch, example={"enabled": False}),
    errors=(403,),
)
async def update_schedule(request: web.Request) -> web.Response:
    """PATCH /api/v1/schedules/{id}: `enabled`, `cron`, `timezone`, `job`, `end_at`. Errors: 400, 401, 404, 422."""
    current = await _visible(request)
    patch = await read_model(request, schedules.SchedulePatch)
    if patch.job is not None:
        patch = patch.model_copy(update={"job": _checked_job(request, patch.job, current.owner)})
    return json_response(_resource(await schedules.update(request.app[PG_POOL], current, patch)))


@routes.delete("/api/v1/schedules/{schedule_id}", Access.USER, "Delete a schedule", responses={204: NO_CONTENT})
async def delete_schedule(request: web.Request) -> web.Response:
    """DELETE /api/v1/schedules/{id}: owner or admin; 204. Errors: 401, 404."""
    current = await _visible(request)
    await schedules.delete(request.app[PG_POOL], current.id)
    return web.Response(status=204)
