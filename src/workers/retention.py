"""Retention: the scheduler deletes finished jobs from the ledger RETENTION_DAYS after they finished, and
sweeps the temp files a killed process left in storage."""

from __future__ import annotations

import logging

from shared import ledger, queue, storage
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
    swept = await storage.remove_stale_temp_files(ctx.settings.storage)
    if swept:
        logger.info("retention.temp_files_removed", extra={"count": swept})
    return removed
