"""The scheduler's firing of recurring jobs: each due fire time becomes exactly one job."""

from __future__ import annotations

import datetime as dt
import logging

from pydantic import ValidationError

from shared import ledger, schedules, submission
from shared.db import Connection
from shared.errors import InvalidInput, PermanentJobError
from shared.json import utcnow
from workers.context import WorkerContext

logger = logging.getLogger(__name__)

BATCH = 50
INTERVAL_S = 1.0


async def fire_due(ctx: WorkerContext) -> int:
    """Fire every due schedule once; returns how many jobs were created.

    A run missed while everything was down fires once, at start, and the schedule moves on to its next
    fire time after now (missed runs are not replayed one by one).
    """
    created: list[ledger.JobRecord] = []
    async with ctx.pg.acquire() as conn, conn.transaction():
        for schedule in await schedules.claim_due(conn, limit=BATCH):
            record = await _fire(conn, ctx, schedule)
            if record is not None:
                created.append(record)
    if created:
        await submission.resubmit(ctx.jobs_redis, created, enqueue_timeout_s=2.0)
        logger.info("schedules.fired", extra={"count": len(created)})
    return len(created)


async def _fire(conn: Connection, ctx: WorkerContext, schedule: schedules.Schedule) -> ledger.JobRecord | None:
    fire_time = schedule.next_run_at
    assert fire_time is not None  # noqa: S101 - claim_due selects only schedules with a due next_run_at
    now = utcnow()
    following: dt.datetime | None = schedules.next_fire(schedule.cron, schedule.timezone, max(fire_time, now))
    if schedule.end_at is not None and following is not None and following > schedule.end_at:
        following = None
    record = None
    if schedule.overlap == "skip_if_running" and await schedules.is_running(conn, schedule.last_job_id):
        logger.info("schedules.skipped_overlap", extra={"schedule_id": schedule.id})
    elif await schedules.record_run(conn, schedule.id, fire_time):
        record = await _create_job(conn, ctx, schedule)
    await schedules.advance(
        conn, schedule, fired_at=fire_time, job_id=record.id if record else None, next_run_at=following
    )
    return record


async def _create_job(conn: Connection, ctx: WorkerContext, schedule: schedules.Schedule) -> ledger.JobRecord | None:
    try:
        request = submission.JobRequest.model_validate(schedule.job, context=submission.STORED)
        new = submission.prepare(
            request, ctx.registry, sealer=ctx.sealer, owner=schedule.owner, request_id=None,
            for_anyone=True,  # checked when the schedule was written
        )  # fmt: skip
    except (InvalidInput, ValidationError, PermanentJobError):
        # The type or its schema changed since the schedule was written, or its secrets were sealed with a
        # key since removed: skip this fire (one schedule never holds up the others), keep the schedule.
        logger.exception("schedules.job_invalid", extra={"schedule_id": schedule.id})
        return None
    record, _ = await ledger.insert_job(conn, new)
    return record
