"""Retention: the scheduler deletes finished jobs from the ledger RETENTION_DAYS after they finished."""

from __future__ import annotations

import asyncio
import logging

from shared import ledger, queue
from shared.db import UNAVAILABLE_ERRORS
from workers.context import WorkerContext

logger = logging.getLogger(__name__)

BATCH = 1000
INTERVAL_S = 60.0


async def purge_once(ctx: WorkerContext) -> int:
    """Delete every finished job past retention, a batch at a time; returns how many."""
    older_than_s = ctx.settings.jobs.retention_days * 86400
    removed = 0
    while True:
        batch = await ledger.delete_finished_before(ctx.pg, older_than_s=older_than_s, limit=BATCH)
        if batch:
            await queue.drop_results(ctx.jobs_redis, batch)
            removed += len(batch)
        if len(batch) < BATCH:
            break
    if removed:
        logger.info("retention.purged", extra={"count": removed})
    return removed


async def run_forever(ctx: WorkerContext, *, interval_s: float = INTERVAL_S) -> None:
    while True:
        try:
            await purge_once(ctx)
        except (*queue.REDIS_ERRORS, *UNAVAILABLE_ERRORS) as exc:
            logger.warning("retention.unavailable", extra={"reason": type(exc).__name__})
        except Exception:  # a background loop's boundary: log it in full and try again next tick
            logger.exception("retention.failed")
        await asyncio.sleep(interval_s)
