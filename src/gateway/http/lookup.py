"""Load what a request names, with ownership applied (another owner's job is a 404), and render it whole."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from gateway.http.resources import job_resource
from gateway.keys import CACHE, PG_POOL, PRINCIPAL
from shared.core.errors import NotFound
from shared.core.ids import well_formed_id
from shared.infra import events
from shared.infra.redis import REDIS_ERRORS
from shared.ledger import records

logger = logging.getLogger(__name__)


async def visible_job(request: web.Request) -> records.JobRecord:
    """The job named in the path, if the caller may see it."""
    job_id = request.match_info["job_id"]
    record = await records.get_job(request.app[PG_POOL], job_id) if well_formed_id(job_id) else None
    if record is None or not request[PRINCIPAL].can_see(record.owner):
        raise NotFound(f"no job {job_id!r}")
    return record


async def running_progress(app: web.Application, jobs: Sequence[records.JobSummary]) -> Mapping[str, Any]:
    """The progress of the running ones among `jobs`, by id (from the cache; none while it is down)."""
    running = [j.id for j in jobs if j.status == "running"]
    try:
        return await events.get_progresses(app[CACHE], running)
    except REDIS_ERRORS as exc:
        logger.warning("job.progress_unavailable", extra={"reason": type(exc).__name__})
        return {}


async def job_view(app: web.Application, record: records.JobRecord) -> dict[str, Any]:
    return job_resource(record, progress=(await running_progress(app, [record])).get(record.id))
