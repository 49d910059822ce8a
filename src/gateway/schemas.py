"""Pydantic models of every response shape in docs/api.md, for the OpenAPI document (routes render plain dicts).

They stay open (unknown fields are allowed) so that adding a field to a resource does not break clients
checking against the document; every field docs/api.md promises is required.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from shared.accounts.roles import Role
from shared.core.status import Finished, JobStatus
from shared.infra.events import Progress

Priority = Literal["low", "normal", "high"]


class Doc(BaseModel):
    model_config = ConfigDict(frozen=True)


class ProblemError(Doc):
    loc: list[str | int] = Field(description='Where the value is, e.g. `["payload", "to", 0]`.')
    msg: str
    type: str | None = None


class Problem(Doc):
    """An RFC 9457 problem; `errors` is present for validation failures."""

    type: str = Field(description="`/problems/<slug>`")
    title: str
    status: int = Field(ge=400, le=599)
    detail: str
    code: str | None = None
    errors: list[ProblemError] | None = None
    request_id: str | None = None


class JobError(Doc):
    type: str = Field(description="The exception's name, e.g. `SMTPRecipientsRefused` or `JobExpired`.")
    message: str
    retryable: bool | None = None


class AttemptError(JobError):
    attempt: int | None = None
    at: dt.datetime | None = None


class JobLinks(Doc):
    self: str
    events: str


class JobSummary(Doc):
    """A job in a list: the job resource without `payload`, `result` and `errors`, which can be large;
    `links.self` is the whole job."""

    id: str
    type: str
    queue: str
    status: JobStatus
    priority: Priority
    owner: str
    attempts: int
    max_attempts: int
    timeout_s: float
    progress: Progress | None
    error: JobError | None
    batch_id: str | None
    idempotency_key: str | None
    created_at: dt.datetime
    scheduled_for: dt.datetime
    expires_at: dt.datetime | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    links: JobLinks


class Job(JobSummary):
    """The job resource."""

    payload: dict[str, JsonValue] = Field(
        description='As submitted (with the type\'s defaults filled in); secret fields show `"[redacted]"`.'
    )
    result: dict[str, JsonValue] | None = Field(description="Set when succeeded; matches the type's result schema.")
    errors: list[AttemptError] = Field(description="The errors of the last 100 failed attempts, oldest first.")


class JobList(Doc):
    items: list[JobSummary]
    next_cursor: str | None


class BatchCreated(Doc):
    id: str
    total: int
    job_ids: list[str]


class Batch(Doc):
    id: str
    total: int
    succeeded: int
    failed: int
    cancelled: int
    pending: int
    status: Literal["running", Finished]
    on_complete_job_id: str | None


class ScheduleLinks(Doc):
    self: str


class Schedule(Doc):
    id: str
    name: str
    cron: str
    timezone: str
    job: dict[str, JsonValue] = Field(description="The job request fired on each run.")
    start_at: dt.datetime | None
    end_at: dt.datetime | None
    enabled: bool
    overlap: Literal["allow", "skip_if_running"]
    next_run_at: dt.datetime | None
    last_run_at: dt.datetime | None
    last_job_id: str | None
    last_skipped_at: dt.datetime | None = Field(description="When a due fire time last made no job.")
    last_skip_reason: Literal["queue_cap", "overlap", "invalid_job", "error"] | None = Field(
        description="Why: the owner's queue was full, the last job still ran, the job no longer validates, or "
        "the fire failed (tried again a minute later)."
    )
    disabled_reason: Literal["owner_revoked", "owner_not_allowed"] | None = Field(
        description="Set when Conveyor turned the schedule off: its owner has no live API key any more, or no "
        "longer the role its job needs. Re-enabling clears it."
    )
    created_at: dt.datetime
    updated_at: dt.datetime
    links: ScheduleLinks


class ScheduleList(Doc):
    items: list[Schedule]
    next_cursor: str | None


class QueueStats(Doc):
    name: str
    queued: int
    scheduled: int
    running: int
    retrying: int
    succeeded: int
    failed: int
    cancelled: int
    waiting: int = Field(description="Due and not started.")
    paused: bool
    workers: int | None = Field(description="Live workers; null while Redis is unreachable.")
    oldest_queued_age_s: float | None


class QueueList(Doc):
    items: list[QueueStats]


class QueueAlert(Doc):
    queue: str
    severity: Literal["warning", "critical"]
    message: str


class QueueHealth(Doc):
    healthy: bool
    alerts: list[QueueAlert]


class Cleaned(Doc):
    removed: int


class RetriedFailed(Doc):
    retried: int
    skipped: int = Field(
        description="Failed jobs left failed: their owner's queue cap (MAX_QUEUED_PER_OWNER) had no room."
    )


class Backoff(Doc):
    kind: Literal["exponential", "fixed"]
    base_s: float
    max_s: float
    jitter: bool


class TypeLimits(Doc):
    concurrency_per_owner: int | None
    per_second: float | None


class JobType(Doc):
    type: str
    queue: str
    description: str
    max_attempts: int
    backoff: Backoff
    timeout_s: float
    max_timeout_s: float
    limits: TypeLimits
    payload_schema: dict[str, JsonValue] = Field(description="JSON Schema of the payload.")
    result_schema: dict[str, JsonValue] = Field(description="JSON Schema of the result.")


class JobTypeList(Doc):
    items: list[JobType]


class Health(Doc):
    status: Literal["ok"]


class Readiness(Doc):
    redis: Literal["ok", "down"] = Field(description="`ok` or `down` (the reason is logged, not shown).")
    postgres: Literal["ok", "down"] = Field(description="`ok` or `down` (the reason is logged, not shown).")


class UploadLinks(Doc):
    self: str


class Upload(Doc):
    id: str
    size: int
    sha256: str
    content_type: str
    filename: str | None
    created_at: dt.datetime
    links: UploadLinks


class UploadList(Doc):
    items: list[Upload]
    next_cursor: str | None


class Notification(Doc):
    id: str
    user: str
    title: str
    body: str
    kind: str
    job_id: str | None
    read: bool
    read_at: dt.datetime | None
    created_at: dt.datetime


class NotificationList(Doc):
    items: list[Notification]
    next_cursor: str | None


class ApiKey(Doc):
    id: str
    name: str
    sub: str
    role: Role
    prefix: str = Field(description="The token's visible start, to recognise it.")
    created_at: dt.datetime
    created_by: str
    last_used_at: dt.datetime | None
    revoked_at: dt.datetime | None


class ApiKeyCreated(ApiKey):
    token: str = Field(description="Shown once; only its hash is stored.")


class ApiKeyList(Doc):
    items: list[ApiKey]
    next_cursor: str | None
