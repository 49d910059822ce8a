"""Job family `system`: `system.echo`, for drills, tests and benchmarks."""

from __future__ import annotations

import asyncio

from shared.errors import RetryableJobError
from shared.jobs import EchoPayload, EchoResult
from workers.context import JobContext


async def handle_echo(job: JobContext, payload: EchoPayload) -> EchoResult:
    """Echo `data` back after `sleep_s`; the first `fail_times` attempts fail retryably. No external effect."""
    if payload.sleep_s:
        await asyncio.sleep(payload.sleep_s)
    if job.attempt <= payload.fail_times:
        raise RetryableJobError(
            f"failing attempt {job.attempt} of the first {payload.fail_times}, as asked", type_name="EchoFailure"
        )
    return EchoResult(data=payload.data, attempt=job.attempt)
