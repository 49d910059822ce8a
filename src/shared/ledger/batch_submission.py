"""Batches: the request, its members checked together, recorded all or none, and its completion.

The on_complete job is made exactly once, by whichever finisher completes the batch (a worker, a cancel,
or the reconciler), and is held to the same rules as any job made later on its owner's behalf: the
queued-jobs cap and the owner's standing (`shared.ledger.submission.owner_refusal`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from arq.connections import ArqRedis
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from shared.core.errors import InvalidInput, PermanentJobError
from shared.infra.db import Connection, Pool
from shared.infra.sealing import Sealer
from shared.jobtypes.spec import Registry
from shared.ledger import batches, owner_caps, records
from shared.ledger.submission import (
    STORED,
    KeylessJobRequest,
    Refusal,
    invalid,
    owner_refusal,
    prepare,
    queue_full,
    resubmit,
)

logger = logging.getLogger(__name__)

MAX_BATCH = 1000


# `batch_id` in an on_complete payload is Conveyor's to set: the published schema says so, and the check
# in prepare_batch keeps it.
_BATCH_ID_UNSET: dict[str, JsonValue] = {"properties": {"payload": {"properties": {"batch_id": {"type": "null"}}}}}


class BatchRequest(BaseModel):
    """The body of `POST /api/v1/batches`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    jobs: list[KeylessJobRequest] = Field(min_length=1, max_length=MAX_BATCH)
    # Keyless like the members: it is made exactly once per batch already, and a key reused from another
    # job would make that one creation fail for good.
    on_complete: KeylessJobRequest | None = Field(
        None,
        description="Enqueued once every member is finished, with the batch's id as `payload.batch_id` (no"
        " idempotency key: it is made exactly once).",
        json_schema_extra=_BATCH_ID_UNSET,
    )


def _prefixed(exc: InvalidInput, *loc: str | int) -> InvalidInput:
    errors = [{**e, "loc": [*loc, *e["loc"]]} for e in exc.errors or []]
    return InvalidInput(exc.message, errors=errors)


def _on_complete_request(on_complete: dict[str, Any], batch_id: str) -> KeylessJobRequest:
    """The stored on_complete request, with `batch_id` merged into its payload.

    A batch accepted while on_complete still took an idempotency key may have stored one: it is dropped,
    as the key of a job made once per batch is never needed (and an already used one would refuse it).
    """
    stored = {k: v for k, v in on_complete.items() if k != "idempotency_key"}
    payload = {**stored.get("payload", {}), "batch_id": batch_id}
    return KeylessJobRequest.model_validate({**stored, "payload": payload}, context=STORED)


def _with_batch_id(on_complete: KeylessJobRequest, batch_id: str) -> KeylessJobRequest:
    """A client's on_complete request as it will run: `batch_id` set in its payload.

    Raises:
        InvalidInput: the client set `payload.batch_id` itself.
    """
    if on_complete.payload.get("batch_id") is not None:
        raise invalid(["payload", "batch_id"], "set by Conveyor to the batch's id; leave it out or null")
    return on_complete.model_copy(update={"payload": {**on_complete.payload, "batch_id": batch_id}})


def prepare_batch(
    request: BatchRequest,
    registry: Registry,
    *,
    sealer: Sealer,
    batch_id: str,
    owner: str,
    request_id: str | None,
    for_anyone: bool = False,
    context: Mapping[str, Any] | None = None,
) -> list[records.NewJob]:
    """Check every member (and the on_complete job) before anything is recorded.

    Raises:
        InvalidInput: with `loc` starting at `["jobs", i]` or `["on_complete"]`.
    """
    members: list[records.NewJob] = []
    for i, member in enumerate(request.jobs):
        try:
            new = prepare(
                member, registry, sealer=sealer, owner=owner, request_id=request_id, for_anyone=for_anyone,
                context=context,
            )  # fmt: skip
        except InvalidInput as exc:
            raise _prefixed(exc, "jobs", i) from exc
        members.append(dataclasses.replace(new, batch_id=batch_id))
    if request.on_complete is not None:
        try:
            prepare(
                _with_batch_id(request.on_complete, batch_id),
                registry,
                sealer=sealer,
                owner=owner,
                request_id=request_id,
                for_anyone=for_anyone,
                context=context,
            )
        except InvalidInput as exc:
            raise _prefixed(exc, "on_complete") from exc
    return members


async def submit_batch(
    pool: Pool, redis: ArqRedis, request: BatchRequest, members: list[records.NewJob], *, batch_id: str, owner: str,
    request_id: str | None, enqueue_timeout_s: float, created_with_key: str | None = None,
) -> list[records.JobRecord]:  # fmt: skip
    """Record the batch and every member in one transaction (all or none), then hand the members to Redis.

    `created_with_key`: the API key the batch was submitted with (None: a JWT), whose principal's standing
    is checked again when the on_complete job is made.
    """
    on_complete = request.on_complete.model_dump(mode="json") if request.on_complete else None
    async with pool.acquire() as conn, conn.transaction():
        jobs = await batches.create(conn, batch_id, owner, members, on_complete, request_id)
        if created_with_key is not None:
            await conn.execute("UPDATE batches SET created_with_key = $2 WHERE id = $1", batch_id, created_with_key)
    await resubmit(redis, jobs, enqueue_timeout_s=enqueue_timeout_s)
    return jobs


async def complete_batch(
    pool: Pool, redis: ArqRedis, registry: Registry, batch_id: str, *, sealer: Sealer, enqueue_timeout_s: float,
    queue_cap: int,
) -> records.JobRecord | None:  # fmt: skip
    """If every member of the batch is finished and nobody completed it yet, complete it: record its
    on_complete job (same transaction) and enqueue it. Safe to call from any number of finishers.

    The on_complete job counts against MAX_QUEUED_PER_OWNER (`queue_cap`) and runs only while its owner
    keeps their standing. Refused, it is recorded `failed` at once with the reason as its error
    (`QueueFull`, `OwnerRevoked`, `PermissionDenied`): the batch completes, its `on_complete_job_id` shows
    why, and the owner may retry that job once it can run.
    """
    async with pool.acquire() as conn, conn.transaction():
        done = await batches.claim_completion(conn, batch_id)
        if done is None or done.on_complete is None:
            return None
        record = await _on_complete_job(conn, registry, done, sealer=sealer, queue_cap=queue_cap)
        if record is None:
            return None
        await batches.set_on_complete_job(conn, batch_id, record.id)
    logger.info("batch.completed", extra={"batch_id": batch_id, "on_complete_job_id": record.id})
    if not record.terminal:
        await resubmit(redis, [record], enqueue_timeout_s=enqueue_timeout_s)
    return record


async def _on_complete_job(
    conn: Connection, registry: Registry, done: batches.Completion, *, sealer: Sealer, queue_cap: int
) -> records.JobRecord | None:
    """Record the batch's on_complete job: runnable, or failed with the reason it may not run."""
    assert done.on_complete is not None  # noqa: S101 - the caller checked
    try:
        request = _on_complete_request(done.on_complete, done.batch_id)
        new = prepare(
            request, registry, sealer=sealer, owner=done.owner, request_id=done.request_id,
            for_anyone=True,  # checked when the batch was accepted; owner_refusal checks it again
        )  # fmt: skip
    except (InvalidInput, ValidationError, PermanentJobError):  # e.g. sealed with a key since removed
        logger.exception("batch.on_complete_invalid", extra={"batch_id": done.batch_id})
        return None
    created_with_key = await conn.fetchval("SELECT created_with_key FROM batches WHERE id = $1", done.batch_id)
    refusal = await owner_refusal(
        conn, request, registry, sealer=sealer, owner=done.owner, created_with_key=created_with_key
    )
    if refusal is None and not await owner_caps.has_room(conn, done.owner, adding=1, cap=queue_cap):
        refusal = queue_full(queue_cap)
    if refusal is None:
        record, _ = await records.insert_job(conn, new)
        return record
    logger.warning("batch.on_complete_refused", extra={"batch_id": done.batch_id, "reason": refusal.code})
    return await _record_refused(conn, new, refusal)


async def _record_refused(conn: Connection, new: records.NewJob, refusal: Refusal) -> records.JobRecord:
    """Record a job that may not run as `failed` at once, with the refusal as its error (never enqueued)."""
    record, _ = await records.insert_job(conn, dataclasses.replace(new, status="failed"))
    error = {"type": refusal.error_type, "message": refusal.message, "retryable": False}
    row = await conn.fetchrow(
        "UPDATE jobs SET error = $2, finished_at = now(), updated_at = now() WHERE id = $1 RETURNING *",
        record.id,
        error,
    )
    assert row is not None  # noqa: S101 - inserted above, in this transaction
    return records.JobRecord.from_row(row)
