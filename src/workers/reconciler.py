"""The ledger reconciler: puts back on Redis every unfinished job the ledger holds and Redis has lost."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from shared import ledger, queue
from shared.db import UNAVAILABLE_ERRORS
from shared.json import utcnow
from workers.context import WorkerContext

logger = logging.getLogger(__name__)

BATCH = 500


def _is_lost_candidate(job: ledger.JobRecord, now: dt.datetime, grace_s: float) -> bool:
    """A running job is only a candidate once it has been silent longer than its own timeout."""
    if job.status != "running":
        return True
    return job.updated_at < now - dt.timedelta(seconds=job.timeout_s + grace_s)


async def reconcile_once(ctx: WorkerContext) -> int:
    """One pass; returns how many jobs were put back on Redis.

    Only jobs untouched for RECONCILE_GRACE_S are looked at, so a job whose enqueue is still in flight
    is left alone; arq's enqueue refuses an id it already holds, so a race costs nothing.
    """
    grace_s = ctx.settings.worker.reconcile_grace_s
    now = utcnow()
    requeued = 0
    candidates = await ledger.unfinished_before(ctx.pg, now - dt.timedelta(seconds=grace_s), limit=BATCH)
    candidates = [job for job in candidates if _is_lost_candidate(job, now, grace_s)]
    missing = set(await queue.missing_from_redis(ctx.jobs_redis, [job.id for job in candidates]))
    put_back: list[str] = []
    for job in candidates:
        if job.id in missing and await queue.enqueue(ctx.jobs_redis, job):
            put_back.append(job.id)
    if put_back:
        requeued = len(put_back)
        await ledger.touch(ctx.pg, put_back)
        ctx.metrics.reconciled.inc(requeued)
        logger.info("reconciler.requeued", extra={"count": requeued})
    return requeued


async def run_forever(ctx: WorkerContext) -> None:
    """Reconcile every RECONCILE_INTERVAL_S until cancelled; outages are logged and waited out."""
    interval = ctx.settings.worker.reconcile_interval_s
    while True:
        try:
            await reconcile_once(ctx)
        except (*queue.REDIS_ERRORS, *UNAVAILABLE_ERRORS) as exc:
            logger.warning("reconciler.unavailable", extra={"reason": type(exc).__name__})
        await asyncio.sleep(interval)
