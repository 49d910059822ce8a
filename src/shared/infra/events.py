"""Job progress and change events in Redis db 0 (disposable): store and read progress, publish changes."""

from __future__ import annotations

import logging
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

from shared.core import json
from shared.infra.redis import CacheRedis

logger = logging.getLogger(__name__)

CHANNEL_PREFIX: Final = "conveyor:events:"
PATTERN: Final = CHANNEL_PREFIX + "*"
# One channel per principal for its notifications (see shared.ledger.notifications), on the same subscription.
NOTIFICATION_PREFIX: Final = "conveyor:notifications:"
NOTIFICATION_PATTERN: Final = NOTIFICATION_PREFIX + "*"
PROGRESS_PREFIX: Final = "conveyor:progress:"
# Progress only matters while a job runs; a day outlives any job timeout.
PROGRESS_TTL_S: Final = 24 * 3600


class Progress(BaseModel):
    """What a handler reports; shown as `progress` in the job resource."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    percent: float | None = Field(None, ge=0, le=100)
    step: str | None = Field(None, max_length=200)
    message: str | None = Field(None, max_length=1000)


def channel(job_id: str) -> str:
    return CHANNEL_PREFIX + job_id


def job_id_of(channel_name: str) -> str:
    return channel_name.removeprefix(CHANNEL_PREFIX)


def notification_channel(user: str) -> str:
    return NOTIFICATION_PREFIX + user


async def set_progress(cache: CacheRedis, job_id: str, progress: Progress) -> None:
    """Store the job's latest progress and tell every listener, in one round trip."""
    body = progress.model_dump(mode="json")
    async with cache.pipeline(transaction=False) as pipe:
        pipe.set(PROGRESS_PREFIX + job_id, json.dumps(body), ex=PROGRESS_TTL_S)
        pipe.publish(channel(job_id), json.dumps({"kind": "progress", "progress": body}))
        await pipe.execute()


async def publish_status(cache: CacheRedis, job_id: str, status: str) -> None:
    """Tell listeners the job's status changed; the ledger holds the new state.

    A run that starts (or a job sent back to the queue) clears the progress of the run before it.
    """
    async with cache.pipeline(transaction=False) as pipe:
        if status in ("running", "queued"):
            pipe.delete(PROGRESS_PREFIX + job_id)
        pipe.publish(channel(job_id), json.dumps({"kind": "status", "status": status}))
        await pipe.execute()


async def get_progresses(cache: CacheRedis, job_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The stored progress of many jobs in one round trip (those without any are left out)."""
    if not job_ids:
        return {}
    raws = await cache.mget([PROGRESS_PREFIX + job_id for job_id in job_ids])
    return {job_id: dict(json.loads(raw)) for job_id, raw in zip(job_ids, raws, strict=True) if raw is not None}
