"""What the router cannot say about each operation: summary, bodies, responses, headers, access.

Keyed by (method, path) with every path variable written `{}`, so a route module may name its variables as
it likes. `gateway.openapi` joins this table (given to it as `app[DOCS]`) with the app's router and the
query parameters `gateway.http.params` declares; a route missing here is reported there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from gateway import schemas
from gateway.openapi import Body, Header, Operation, Operations
from gateway.routes.queues import CleanRequest
from gateway.routes.webhook_keys import SigningKey
from shared.accounts.api_keys import KeyRequest
from shared.jobtypes.spec import Queue
from shared.ledger.batch_submission import BatchRequest
from shared.ledger.schedules import SchedulePatch, ScheduleRequest
from shared.ledger.submission import JobRequest

EVENT_STREAM = "text/event-stream"


def _json(model: type[BaseModel], description: str = "", example: Any = None) -> tuple[Body, ...]:
    return (Body(description or model.__doc__ or model.__name__, model, example=example),)


def _ok(model: type[BaseModel], description: str = "OK", *headers: str) -> Body:
    return Body(description, model, headers=headers)


QUEUE_PATH = {"name": {"type": "string", "enum": [q.value for q in Queue], "description": "A queue name."}}
IDEMPOTENCY_KEY = Header(
    "Idempotency-Key",
    {"type": "string", "minLength": 1, "maxLength": 255},
    "Same as `idempotency_key` in the body (given both, they must be equal, else 422): a repeat within 24 h"
    " returns the original job (200).",
)
BINARY: Mapping[str, Any] = {"type": "string", "contentMediaType": "application/octet-stream"}
# An empty file is refused (400): an empty body is nearly always a client's mistake.
# `format: binary` as well: fuzzers then generate bytes for it, and no "wrong type" for what is bytes on the wire.
FILE: Mapping[str, Any] = {
    **BINARY,
    "format": "binary",
    "minLength": 1,
    "description": "The file's bytes; at least one.",
}
UPLOAD_BODIES = (
    Body("The file as the raw body (any media type).", media_type="application/octet-stream", schema=FILE),
    Body(
        "One file field, and nothing else.",
        media_type="multipart/form-data",
        schema={"type": "object", "properties": {"file": FILE}, "required": ["file"], "additionalProperties": False},
    ),
)
NO_CONTENT = Body("Done; no body.", media_type="")
ECHO = {"type": "system.echo", "payload": {"data": {"hello": "world"}}}
SCHEDULE = {"name": "nightly-echo", "cron": "0 2 * * *", "timezone": "Europe/Paris", "job": ECHO}
CLEAN = {"older_than_s": 604800, "statuses": ["succeeded", "failed", "cancelled"]}
KEY = {"name": "ci", "sub": "ci-bot", "role": "user"}

OPERATIONS: Operations = {
    # Operations (no auth)
    ("GET", "/health"): Operation(
        "Liveness: the process is alive (no I/O)", "operations", {200: _ok(schemas.Health)}, access="public"
    ),
    ("GET", "/ready"): Operation(
        "Readiness: Redis and PostgreSQL answer",
        "operations",
        {200: _ok(schemas.Readiness, "Every dependency answers"), 503: _ok(schemas.Readiness, "A dependency is down")},
        access="public",
    ),
    ("GET", "/metrics"): Operation(
        "Prometheus metrics: on the API port in development; otherwise on METRICS_HOST:METRICS_PORT (404 here)",
        "operations",
        {200: Body("Prometheus text format", media_type="text/plain", schema={"type": "string"})},
        access="public",
    ),
    ("GET", "/api/v1/openapi.json"): Operation(
        "This document",
        "operations",
        {200: Body("OpenAPI 3.1", schema={"type": "object"})},
        access="public",
    ),
    # Jobs
    ("POST", "/api/v1/jobs"): Operation(
        "Enqueue a job",
        "jobs",
        {
            202: _ok(schemas.Job, "Recorded durably; queued or scheduled", "Location"),
            200: _ok(schemas.Job, "Idempotent replay: the original job", "Location", "Idempotent-Replayed"),
        },
        request=_json(JobRequest, "A job request; `payload` follows the schema of its `type`.", ECHO),
        headers=(IDEMPOTENCY_KEY,),
        errors=(403, 409),
    ),
    ("GET", "/api/v1/jobs"): Operation(
        "List jobs, newest first",
        "jobs",
        {200: _ok(schemas.JobList)},
        description="A user sees its own jobs, an admin every job. Each item is the job without `payload`, "
        "`result` and `errors`: GET its `links.self` for them. Unknown query parameters are a 400.",
    ),
    ("GET", "/api/v1/jobs/{}"): Operation("Get a job", "jobs", {200: _ok(schemas.Job)}),
    ("GET", "/api/v1/jobs/{}/events"): Operation(
        "Follow a job as a live event stream",
        "jobs",
        {200: Body("`event: job` on each change, `event: end` after a terminal status", media_type=EVENT_STREAM)},
        description="One `event: job` with the resource at once, then one per change of status or progress, "
        "`event: end` after a terminal status; a heartbeat comment every SSE_HEARTBEAT_S.",
    ),
    ("POST", "/api/v1/jobs/{}/cancel"): Operation(
        "Cancel a job", "jobs", {200: _ok(schemas.Job, "Cancelled")}, errors=(409,)
    ),
    ("POST", "/api/v1/jobs/{}/retry"): Operation(
        "Retry a failed or cancelled job",
        "jobs",
        {202: _ok(schemas.Job, "Queued again, attempts from 0", "Location")},
        errors=(409,),
    ),
    ("GET", "/api/v1/job-types"): Operation(
        "List job types with their policy and schemas", "jobs", {200: _ok(schemas.JobTypeList)}
    ),
    # Batches
    ("POST", "/api/v1/batches"): Operation(
        "Enqueue a batch of jobs atomically",
        "batches",
        {202: _ok(schemas.BatchCreated, "Every member recorded", "Location")},
        request=_json(BatchRequest, example={"jobs": [ECHO, ECHO], "on_complete": ECHO}),
        errors=(403,),
    ),
    ("GET", "/api/v1/batches/{}"): Operation("Get a batch's progress", "batches", {200: _ok(schemas.Batch)}),
    # Uploads and artifacts
    ("POST", "/api/v1/uploads"): Operation(
        "Upload a file (streamed to storage)",
        "files",
        {201: _ok(schemas.Upload, "Stored", "Location")},
        request=UPLOAD_BODIES,
        description="An empty file (no body, or an empty file field) is refused with a 400.",
    ),
    ("GET", "/api/v1/uploads"): Operation(
        "List uploads, newest first",
        "files",
        {200: _ok(schemas.UploadList)},
    ),
    ("GET", "/api/v1/uploads/{}"): Operation("Get an upload's metadata", "files", {200: _ok(schemas.Upload)}),
    ("DELETE", "/api/v1/uploads/{}"): Operation("Delete an upload and its file", "files", {204: NO_CONTENT}),
    ("GET", "/api/v1/artifacts/{}"): Operation(
        "Download an artifact a job produced",
        "files",
        {
            200: Body("The file, with its own content type", media_type="*/*", schema=BINARY, headers=("ETag",)),
            304: Body("Unchanged since the ETag given in If-None-Match", media_type="", headers=("ETag",)),
        },
        headers=(Header("If-None-Match", {"type": "string"}, "An ETag from an earlier download."),),
    ),
    ("DELETE", "/api/v1/artifacts/{}"): Operation(
        "Delete an artifact and its file (frees its bytes of your storage quota)", "files", {204: NO_CONTENT}
    ),
    # Schedules
    ("POST", "/api/v1/schedules"): Operation(
        "Create a schedule",
        "schedules",
        {201: _ok(schemas.Schedule, "Created", "Location")},
        request=_json(ScheduleRequest, example=SCHEDULE),
        errors=(403, 409),
    ),
    ("GET", "/api/v1/schedules"): Operation("List schedules", "schedules", {200: _ok(schemas.ScheduleList)}),
    ("GET", "/api/v1/schedules/{}"): Operation("Get a schedule", "schedules", {200: _ok(schemas.Schedule)}),
    ("PATCH", "/api/v1/schedules/{}"): Operation(
        "Change a schedule",
        "schedules",
        {200: _ok(schemas.Schedule)},
        request=_json(SchedulePatch, example={"enabled": False}),
        errors=(403,),
    ),
    ("DELETE", "/api/v1/schedules/{}"): Operation("Delete a schedule", "schedules", {204: NO_CONTENT}),
    # Notifications
    ("GET", "/api/v1/notifications"): Operation(
        "List the caller's notifications, newest first",
        "notifications",
        {200: _ok(schemas.NotificationList)},
    ),
    ("POST", "/api/v1/notifications/{}/read"): Operation(
        "Mark a notification read", "notifications", {200: _ok(schemas.Notification)}
    ),
    ("GET", "/api/v1/notifications/stream"): Operation(
        "The caller's notifications as a live event stream",
        "notifications",
        {200: Body("`event: notification` for each new one", media_type=EVENT_STREAM)},
        headers=(
            Header(
                "Last-Event-ID",
                {"type": "string"},
                "On a reconnect: the notifications created after this one are sent first.",
            ),
        ),
        description="429 past SSE_MAX_PER_PRINCIPAL open streams.",
    ),
    # Webhooks
    ("GET", "/api/v1/webhook-signing-key"): Operation(
        "The key that signs your webhook deliveries",
        "webhooks",
        {200: _ok(SigningKey)},
        errors=(403, 409),
        description="Each owner's deliveries are signed with that owner's own key, derived from WEBHOOK_SECRET:"
        " a receiver checking `Conveyor-Signature` with this key and `Conveyor-Owner` against you accepts only"
        " deliveries of your jobs. A user reads only its own key (another owner's is a 403); an admin may name"
        " any owner. 409 when WEBHOOK_SECRET is not set (deliveries are then unsigned).",
    ),
    # Queues (admin)
    ("GET", "/api/v1/queues"): Operation("Queue statistics", "queues", {200: _ok(schemas.QueueList)}, access="admin"),
    ("GET", "/api/v1/queues/health"): Operation(
        "Queue alerts by the QUEUE_ALERT_* thresholds", "queues", {200: _ok(schemas.QueueHealth)}, access="admin"
    ),
    ("GET", "/api/v1/queues/{}"): Operation(
        "One queue's statistics", "queues", {200: _ok(schemas.QueueStats)}, access="admin", path=QUEUE_PATH
    ),
    ("POST", "/api/v1/queues/{}/pause"): Operation(
        "Pause a queue: once this answers 200 no new job of it starts on any worker; enqueueing still works",
        "queues",
        {200: _ok(schemas.QueueStats)},
        access="admin",
        path=QUEUE_PATH,
        errors=(409,),  # other pauses and resumes kept landing meanwhile; 503: Redis did not confirm
    ),
    ("POST", "/api/v1/queues/{}/resume"): Operation(
        "Resume a queue", "queues", {200: _ok(schemas.QueueStats)}, access="admin", path=QUEUE_PATH, errors=(409,)
    ),
    ("POST", "/api/v1/queues/{}/clean"): Operation(
        "Remove finished jobs of a queue",
        "queues",
        {200: _ok(schemas.Cleaned)},
        access="admin",
        path=QUEUE_PATH,
        request=_json(CleanRequest, "Which finished jobs to remove (the defaults when no body is sent).", CLEAN),
        request_required=False,
    ),
    ("POST", "/api/v1/queues/{}/retry-failed"): Operation(
        "Retry every failed job of a queue",
        "queues",
        {200: _ok(schemas.RetriedFailed)},
        access="admin",
        path=QUEUE_PATH,
    ),
    # API keys (admin)
    ("POST", "/api/v1/api-keys"): Operation(
        "Create an API key (its token is shown once)",
        "api-keys",
        {201: _ok(schemas.ApiKeyCreated, "Created", "Location")},
        access="admin",
        request=_json(KeyRequest, "The key's name, the principal it acts as, its role.", KEY),
    ),
    ("GET", "/api/v1/api-keys"): Operation(
        "List API keys (never their tokens)",
        "api-keys",
        {200: _ok(schemas.ApiKeyList)},
        access="admin",
    ),
    ("DELETE", "/api/v1/api-keys/{}"): Operation(
        "Revoke an API key, effective immediately",
        "api-keys",
        {204: NO_CONTENT},
        access="admin",
        description="An unknown or already revoked key is a 404.",
    ),
}
