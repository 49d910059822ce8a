"""The enqueue side's only arq import: open the jobs pool, enqueue a ledger record, check what Redis holds."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

from arq.connections import ArqRedis, RedisSettings
from arq.constants import job_key_prefix, result_key_prefix
from redis.exceptions import RedisError

from shared import json
from shared.ledger import JobRecord
from shared.settings import RedisConfig

# One arq function per worker process dispatches on the job type; see workers.runtime for why.
RUN_FUNCTION: Final = "conveyor.run"
QUEUE_PREFIX: Final = "conveyor:queue:"
REDIS_ERRORS = (RedisError, OSError, TimeoutError)


def queue_key(queue: str) -> str:
    return QUEUE_PREFIX + queue


def serialize(value: dict[str, Any]) -> bytes:
    """arq's job and result records as JSON: no pickle, readable with redis-cli."""
    return json.dumps(value)


def deserialize(data: bytes) -> dict[str, Any]:
    value = json.loads(data)
    if not isinstance(value, dict):
        raise TypeError("an arq record must be a JSON object")
    return value


def jobs_redis(config: RedisConfig, *, queue: str = "default") -> ArqRedis:
    settings = RedisSettings.from_dsn(config.jobs_url)
    return ArqRedis(
        host=settings.host,
        port=settings.port,
        db=settings.database,
        username=settings.username,
        password=settings.password,
        ssl=settings.ssl,
        socket_connect_timeout=config.connect_timeout_s,
        socket_timeout=config.connect_timeout_s * 2,
        job_serializer=serialize,
        job_deserializer=deserialize,
        default_queue_name=queue_key(queue),
    )


@asynccontextmanager
async def open_jobs_redis(config: RedisConfig, *, queue: str = "default") -> AsyncIterator[ArqRedis]:
    """The db 1 client (arq queues and results); connects lazily, so a Redis outage does not stop start-up."""
    client = jobs_redis(config, queue=queue)
    try:
        yield client
    finally:
        await client.aclose(close_connection_pool=True)


def envelope(job: JobRecord) -> dict[str, Any]:
    """What a worker needs to run one attempt without reading the ledger first."""
    return {
        "id": job.id,
        "type": job.type,
        "owner": job.owner,
        "payload": job.payload,
        "max_attempts": job.max_attempts,
        "timeout_s": job.timeout_s,
        "expires_at": json.rfc3339(job.expires_at),
        "request_id": job.request_id,
    }


async def enqueue(redis: ArqRedis, job: JobRecord) -> bool:
    """Put a ledger record on its arq queue; False when arq already holds it (queued or with a result).

    A retrying or rescheduled job goes back at its `scheduled_for` time with its attempt count carried on.
    """
    defer_until = job.scheduled_for if job.scheduled_for > json.utcnow() else None
    handle = await redis.enqueue_job(
        RUN_FUNCTION,
        envelope(job),
        _job_id=job.id,
        _queue_name=queue_key(job.queue),
        _defer_until=defer_until,
        _job_try=job.attempts + 1 if job.attempts else None,
    )
    return handle is not None


async def missing_from_redis(redis: ArqRedis, job_ids: Sequence[str]) -> list[str]:
    """The ids among `job_ids` whose arq job record Redis no longer holds."""
    if not job_ids:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.exists(job_key_prefix + job_id)
        found = await pipe.execute()
    return [job_id for job_id, exists in zip(job_ids, found, strict=True) if not exists]


async def drop_result(redis: ArqRedis, job_id: str) -> None:
    """Forget arq's stored outcome of `job_id`, so that arq accepts the id again."""
    await redis.delete(result_key_prefix + job_id)
