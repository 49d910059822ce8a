"""The scheduler's firing of recurring jobs: each due fire time becomes exactly one job, or is skipped for a
recorded reason.

Each schedule fires in its own savepoint: one whose fire raises is logged, counted in
`background_item_failures_total{loop="schedules"}` and tried again later, never holding up the others. A
fire is skipped (the schedule moves on, `last_skip_reason` says why) while its owner has
MAX_QUEUED_PER_OWNER jobs waiting; a schedule whose owner lost their standing (every API key revoked, or
no longer an admin for a job acting for someone else) is disabled with `disabled_reason`.
"""

from __future__ import annotations

import datetime as dt
import logging

from pydantic import ValidationError

from shared.core.errors import InvalidInput, PermanentJobError
from shared.core.json import utcnow
from shared.infra.db import Connection
from shared.ledger import owner_caps, records, schedules, submission
from workers.context import WorkerContext
from workers.loops.background import isolated

logger = logging.getLogger(__name__)

BATCH = 50
INTERVAL_S = 1.0


async def fire_due(ctx: WorkerContext) -> int:
    """Fire every due schedule once; returns how many jobs were created.

    A run missed while everything was down fires once, at start, and the schedule moves on to its next
    fire time after now (missed runs are not replayed one by one).
    """
    cap = ctx.settings.security.max_queued_per_owner
    created: list[records.JobRecord] = []
    async with ctx.pg.acquire() as conn, conn.transaction():
        for schedule in await schedules.claim_due(conn, limit=BATCH):
            record = await _fire_isolated(conn, ctx, schedule, queue_cap=cap)
            if record is not None:
                created.append(record)
    if created:
        await submission.resubmit(ctx.jobs_redis, created, enqueue_timeout_s=2.0)
        logger.info("schedules.fired", extra={"count": len(created)})
    return len(created)


async def _fire_isolated(
    conn: Connection, ctx: WorkerContext, schedule: schedules.Schedule, *, queue_cap: int
) -> records.JobRecord | None:
    """Fire one schedule in a savepoint; if that raises (an outage aside), undo only its writes and try it
    again in RETRY_FAILED_S."""
    with isolated(ctx.metrics, "schedules", "schedules.fire_failed", schedule_id=schedule.id):
        async with conn.transaction():
            return await _fire(conn, ctx, schedule, queue_cap=queue_cap)
    assert schedule.next_run_at is not None  # noqa: S101 - claim_due selects only due schedules
    with isolated(ctx.metrics, "schedules", "schedules.postpone_failed", schedule_id=schedule.id):
        async with conn.transaction():
            await schedules.postpone(conn, schedule.id, fire_time=schedule.next_run_at)
    return None


async def _fire(
    conn: Connection, ctx: WorkerContext, schedule: schedules.Schedule, *, queue_cap: int
) -> records.JobRecord | None:
    fire_time = schedule.next_run_at
    assert fire_time is not None  # noqa: S101 - claim_due selects only schedules with a due next_run_at
    now = utcnow()
    following: dt.datetime | None = schedules.next_fire(schedule.cron, schedule.timezone, max(fire_time, now))
    if schedule.end_at is not None and following is not None and following > schedule.end_at:
        following = None
    try:
        request = submission.JobRequest.model_validate(schedule.job, context=submission.STORED)
    except ValidationError:
        request = None  # refused by _create_job below, with the reason logged
    if request is not None:
        refusal = await submission.owner_refusal(
            conn, request, ctx.registry, sealer=ctx.sealer, owner=schedule.owner,
            created_with_key=schedule.created_with_key,
        )  # fmt: skip
        if refusal is not None:
            await schedules.disable(conn, schedule.id, reason=refusal.code)
            logger.warning("schedules.disabled", extra={"schedule_id": schedule.id, "reason": refusal.code})
            return None
    record: records.JobRecord | None = None
    skipped: schedules.SkipReason | None = None
    if schedule.overlap == "skip_if_running" and await schedules.is_running(conn, schedule.last_job_id):
        skipped = "overlap"
    elif not await owner_caps.has_room(conn, schedule.owner, adding=1, cap=queue_cap):
        skipped = "queue_cap"
    elif await schedules.record_run(conn, schedule.id, fire_time):
        record = await _create_job(conn, ctx, schedule)
        skipped = None if record is not None else "invalid_job"
    if skipped is not None:
        logger.info("schedules.skipped", extra={"schedule_id": schedule.id, "reason": skipped})
        ctx.metrics.schedule_fires_skipped.labels(skipped).inc()
    await schedules.advance(
        conn, schedule, fired_at=fire_time, job_id=record.id if record else None, next_run_at=following,
        skipped=skipped,
    )  # fmt: skip
    return record


async def _create_job(conn: Connection, ctx: WorkerContext, schedule: schedules.Schedule) -> records.JobRecord | None:
    try:
        request = submission.JobRequest.model_validate(schedule.job, context=submission.STORED)
        new = submission.prepare(
            request, ctx.registry, sealer=ctx.sealer, owner=schedule.owner, request_id=None,
            for_anyone=True,  # checked when the schedule was written, and its owner's standing just now
        )  # fmt: skip
    except (InvalidInput, ValidationError, PermanentJobError):
        # The type or its schema changed since the schedule was written (or the type is turned off here), or
        # its secrets were sealed with a key since removed: skip this fire, keep the schedule.
        logger.exception("schedules.job_invalid", extra={"schedule_id": schedule.id})
        return None
    record, _ = await records.insert_job(conn, new)
    return record
