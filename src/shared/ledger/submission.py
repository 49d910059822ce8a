"""Job requests: the request model, its validation against the registry, and durable submission (ledger, then Redis)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Self, TypeVar

from arq.connections import ArqRedis
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from shared.accounts import api_keys
from shared.core import json
from shared.core.errors import InvalidInput, PermissionDenied
from shared.infra import broker, pages
from shared.infra.db import Connection, Pool
from shared.infra.group_commit import GroupCommit
from shared.infra.redis import REDIS_ERRORS
from shared.infra.sealing import SEALED, Sealer, contains_sealed
from shared.jobtypes.spec import AnySpec, Payload, Registry, Timestamp
from shared.ledger import owner_caps, records

logger = logging.getLogger(__name__)

MAX_DELAY_S = 366 * 24 * 3600.0
# A job's payload as JSON, whatever MAX_BODY_BYTES allows (raised for big batches); bigger inputs go through
# uploads. The largest built-in field (email `text`/`html`, 512 KiB each) fits.
MAX_PAYLOAD_BYTES = 1024 * 1024


# Validation context of a request Conveyor stored itself (a schedule's job, a batch's on_complete): its
# sealed values are its own, and its payload was checked strictly when it was accepted.
STORED_KEY = "stored"
STORED: dict[str, Any] = {STORED_KEY: True}
# What the model validators below refuse, stated in the published schema: `delay_s` or `run_at`, not both.
_ONE_START_TIME: dict[str, JsonValue] = {
    "anyOf": [
        {"title": "no delay_s", "properties": {"delay_s": {"type": "null"}}},
        {"title": "no run_at", "properties": {"run_at": {"type": "null"}}},
    ]
}


class KeylessJobRequest(BaseModel):
    """A job request without an idempotency key: a member of a batch, the job of a schedule (each is unique
    already)."""

    model_config = ConfigDict(frozen=True, extra="forbid", json_schema_extra=_ONE_START_TIME)

    type: str = Field(min_length=1, max_length=100, description="A registered job type, e.g. `email.send`.")
    payload: dict[str, JsonValue] = Field(default_factory=dict)
    priority: Literal["low", "normal", "high"] = "normal"
    delay_s: float | None = Field(None, ge=0, le=MAX_DELAY_S, description="Not with `run_at`.")
    run_at: Timestamp | None = Field(
        None,
        description=f"From {pages.MIN_TIME.year}-01-01T00:00:00Z to {MAX_DELAY_S / 86400:g} days from now (a later"
        " or earlier time is a 422); not with `delay_s`.",
    )
    max_attempts: int | None = Field(None, ge=1, le=25)
    timeout_s: float | None = Field(None, gt=0)
    expires_in_s: float | None = Field(None, gt=0, le=MAX_DELAY_S)
    _stored: bool = PrivateAttr(False)

    @property
    def stored(self) -> bool:
        """Validated with STORED: a request Conveyor stored itself, checked when it was accepted."""
        return self._stored

    @model_validator(mode="after")
    def _one_start_time(self, info: ValidationInfo) -> Self:
        if self.delay_s is not None and self.run_at is not None:
            raise ValueError("give `delay_s` or `run_at`, not both")
        self._stored = bool((info.context or {}).get(STORED_KEY))
        return self

    @field_validator("payload")
    @classmethod
    def _no_sealed_values(cls, value: dict[str, JsonValue], info: ValidationInfo) -> dict[str, JsonValue]:
        # Only Conveyor seals. A client sending a sealed value (from a leaked dump, say) would otherwise get
        # it opened into a field it can read back; stored requests are validated with STORED.
        if not (info.context or {}).get(STORED_KEY) and contains_sealed(value):
            raise ValueError(f"`{SEALED}` values are Conveyor's own and may not be sent")
        return value

    @field_validator("payload")
    @classmethod
    def _payload_size(cls, value: dict[str, JsonValue]) -> dict[str, JsonValue]:
        if len(json.dumps(value)) > MAX_PAYLOAD_BYTES:
            raise ValueError(f"at most {MAX_PAYLOAD_BYTES // 1024} KiB as JSON; pass bigger inputs as an upload")
        return value

    @field_validator("run_at")
    @classmethod
    def _run_at_in_range(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is None:
            return None
        try:
            utc = value.astimezone(dt.UTC)
        except OverflowError as exc:
            raise ValueError("out of range") from exc
        latest = json.utcnow() + dt.timedelta(seconds=MAX_DELAY_S)
        if not pages.MIN_TIME <= utc <= latest:
            raise ValueError(f"must be between {pages.MIN_TIME.year} and {MAX_DELAY_S / 86400:g} days from now")
        return utc


class JobRequest(KeylessJobRequest):
    """The body of `POST /api/v1/jobs` (and a batch's `on_complete`)."""

    idempotency_key: str | None = Field(
        None,
        min_length=1,
        max_length=255,
        description="A repeat within 24 h returns the original job; also accepted as the Idempotency-Key header"
        " (given both, they must be equal, else 422).",
    )


def invalid(loc: list[str | int], msg: str, kind: str = "value_error") -> InvalidInput:
    return InvalidInput("the request does not match its schema", errors=[{"loc": loc, "msg": msg, "type": kind}])


def _payload(
    spec: AnySpec, request: KeylessJobRequest, sealer: Sealer, context: Mapping[str, Any] | None = None
) -> Payload:
    """The request's payload (sealed values opened) as the type's model.

    A new request is validated strictly, as its published schema says (a boolean is no number, a string no
    number); a stored one as it was when it was accepted.

    Raises:
        ValidationError: the payload does not match.
    """
    opened = sealer.open(request.payload)
    if request.stored:
        return spec.payload_model.model_validate(opened)  # type: ignore[no-any-return]
    return spec.payload_model.model_validate_json(  # type: ignore[no-any-return]
        json.dumps(opened), strict=True, context=context
    )


def prepare(
    request: KeylessJobRequest,
    registry: Registry,
    *,
    sealer: Sealer,
    owner: str,
    request_id: str | None,
    job_id: str | None = None,
    for_anyone: bool = False,
    context: Mapping[str, Any] | None = None,
) -> records.NewJob:
    """Check a request against its type (payload schema, timeout cap) and build the ledger row, whose
    payload has its secret fields sealed (a request whose payload is already sealed is opened to check it).

    Raises:
        InvalidInput: unknown type, payload not matching the type's model, timeout over the type's cap.
        PermissionDenied: the job would act for another principal (`JobSpec.on_behalf_of`) and the caller
            may not (`for_anyone`: an admin, or a request already checked when it was accepted).
    """
    spec = registry.get(request.type)
    if spec is None:
        raise invalid(["type"], f"unknown job type; known types: {', '.join(registry.names())}", "unknown_type")
    try:
        payload = _payload(spec, request, sealer, context)
    except ValidationError as exc:
        raise InvalidInput(
            f"the payload does not match the schema of `{spec.name}`",
            errors=[
                {"loc": ["payload", *e["loc"]], "msg": e["msg"], "type": e["type"]}
                for e in exc.errors(include_input=False)
            ],
        ) from exc
    if spec.on_behalf_of and not for_anyone and getattr(payload, spec.on_behalf_of) != owner:
        raise PermissionDenied(f"`payload.{spec.on_behalf_of}` of a `{spec.name}` job must be you (`{owner}`)")
    timeout_s = request.timeout_s if request.timeout_s is not None else spec.timeout_s
    if timeout_s > spec.max_timeout_s:
        raise invalid(["timeout_s"], f"at most {spec.max_timeout_s:g} for `{spec.name}`", "less_than_equal")
    now = json.utcnow()
    if request.run_at is not None:
        scheduled_for = request.run_at.astimezone(dt.UTC)
    else:
        scheduled_for = now + dt.timedelta(seconds=request.delay_s or 0)
    idempotency_key = request.idempotency_key if isinstance(request, JobRequest) else None
    return records.NewJob(
        id=job_id or records.new_job_id(),
        type=spec.name,
        queue=spec.queue.value,
        owner=owner,
        priority=request.priority,
        payload=sealer.seal(payload.model_dump(mode="json"), payload.secret_paths()),
        max_attempts=request.max_attempts or spec.max_attempts,
        timeout_s=timeout_s,
        scheduled_for=scheduled_for,
        expires_at=now + dt.timedelta(seconds=request.expires_in_s) if request.expires_in_s else None,
        idempotency_key=idempotency_key,
        request_hash=_fingerprint(request) if idempotency_key else None,
        request_id=request_id,
        status="scheduled" if scheduled_for > now else "queued",
    )


def _fingerprint(request: KeylessJobRequest) -> str:
    """What tells a replay from another request under the same idempotency key: the request less its key."""
    return hashlib.sha256(json.canonical(request.model_dump(mode="json", exclude={"idempotency_key"}))).hexdigest()


async def submit(
    pool: Pool, redis: ArqRedis, job: records.NewJob, *, enqueue_timeout_s: float
) -> tuple[records.JobRecord, bool, bool]:
    """Record the job in the ledger (committed on return), then hand it to Redis.

    A Redis failure does not fail the submission: the job is durable and the reconciler enqueues it later.

    Returns:
        (record, created, enqueued): `created` is False for an idempotent replay.
    """
    record, created = await records.insert_job(pool, job)
    if not created:
        return record, False, False
    return record, True, await hand_over(redis, record, enqueue_timeout_s=enqueue_timeout_s)


async def hand_over(redis: ArqRedis, record: records.JobRecord, *, enqueue_timeout_s: float) -> bool:
    """Hand a job the ledger has just recorded to Redis; False when Redis failed (the job is durable and the
    reconciler enqueues it later, so the submission stands)."""
    try:
        async with asyncio.timeout(enqueue_timeout_s):
            await broker.enqueue(redis, record)
    except REDIS_ERRORS as exc:
        logger.warning("job.enqueue_deferred", extra={"job_id": record.id, "reason": type(exc).__name__})
        return False
    return True


class HandOver:
    """Hands the jobs of concurrent submissions to Redis in groups: one `broker.enqueue_many` call (one
    EVALSHA) per group instead of one call per request, each caller waiting for its own group (a GroupCommit).

    A Redis failure or a group past `enqueue_timeout_s` does not fail the submissions: the jobs are durable
    and the reconciler enqueues them later; their callers learn False (`job.enqueue_deferred`).
    """

    def __init__(self, redis: ArqRedis, *, enqueue_timeout_s: float) -> None:
        self._redis = redis
        self.enqueue_timeout_s = enqueue_timeout_s
        self.groups: GroupCommit[records.JobRecord, bool] = GroupCommit(self._flush, max_items=200)

    async def enqueue(self, record: records.JobRecord) -> bool:
        """Enqueue the job with the next group; False when Redis failed (the reconciler will enqueue it)."""
        return await self.groups.submit(record)

    async def close(self) -> None:
        await self.groups.close()

    async def _flush(self, jobs: Sequence[records.JobRecord]) -> list[bool]:
        try:
            async with asyncio.timeout(self.enqueue_timeout_s):
                await broker.enqueue_many(self._redis, jobs)
        except REDIS_ERRORS as exc:
            for record in jobs:
                logger.warning("job.enqueue_deferred", extra={"job_id": record.id, "reason": type(exc).__name__})
            return [False] * len(jobs)
        return [True] * len(jobs)


async def resubmit(redis: ArqRedis, jobs: list[records.JobRecord], *, enqueue_timeout_s: float) -> None:
    """Hand jobs the ledger has just put back to `queued` (a new generation each) to Redis.

    On a Redis failure the jobs stay queued in the ledger and the reconciler enqueues them.
    """
    try:
        async with asyncio.timeout(enqueue_timeout_s * max(1, len(jobs) / 100)):
            for record in jobs:
                await broker.enqueue(redis, record)
    except REDIS_ERRORS as exc:
        logger.warning("job.enqueue_deferred", extra={"count": len(jobs), "reason": type(exc).__name__})


R = TypeVar("R", bound=KeylessJobRequest)


def sealed_request(request: R, registry: Registry, *, sealer: Sealer) -> R:
    """The request to store for later (a schedule's job, a batch's on_complete): its secret fields sealed.

    Call it after `prepare` accepted the request (an unknown type or a bad payload is returned as is).
    """
    spec = registry.get(request.type)
    if spec is None:
        return request
    try:
        payload = _payload(spec, request, sealer)
    except ValidationError:
        return request
    return request.model_copy(update={"payload": sealer.seal(request.payload, payload.secret_paths())})


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    """Why stored work may not run as its owner now: `code` for clients, `message` for people."""

    code: str  # owner_revoked | owner_not_allowed | queue_cap
    error_type: str  # the `error.type` of a job refused for it
    message: str


async def owner_refusal(
    conn: Connection, request: KeylessJobRequest, registry: Registry, *, sealer: Sealer, owner: str,
    created_with_key: str | None,
) -> Refusal | None:  # fmt: skip
    """Whether the owner of stored work (a schedule's job, a batch's on_complete) has lost the standing it
    had when the work was accepted (shared.accounts.api_keys.standing): None while it may still run as them."""
    now = await api_keys.standing(conn, owner, created_with_key)
    if now.revoked:
        return Refusal(
            "owner_revoked", "OwnerRevoked", "every API key of the owner was revoked after this work was created"
        )
    if not now.for_anyone:
        try:
            prepare(request, registry, sealer=sealer, owner=owner, request_id=None, for_anyone=False)
        except PermissionDenied as exc:
            return Refusal("owner_not_allowed", "PermissionDenied", f"the owner is no longer an admin: {exc.message}")
    return None


def queue_full(cap: int) -> Refusal:
    return Refusal("queue_cap", "QueueFull", f"{owner_caps.QueueFull(cap).message} (MAX_QUEUED_PER_OWNER)")
