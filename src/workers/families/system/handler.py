"""Job family `system`: `system.echo`, for drills, tests and benchmarks."""

from __future__ import annotations

import asyncio

from shared.core.errors import PermanentJobError, RetryableJobError
from shared.jobtypes.system import SYSTEM_ECHO, EchoPayload, EchoResult
from workers.context import JobContext
from workers.runtime import AnyHandler, bind


async def _sleep_reporting(job: JobContext, sleep_s: float) -> None:
    """Sleep, reporting progress about once a second (every tenth of the time for short sleeps)."""
    step = min(1.0, sleep_s / 10)
    slept = 0.0
    while slept < sleep_s:
        await job.progress(
            percent=round(100 * slept / sleep_s, 1), step="sleeping", message=f"{slept:g}s of {sleep_s:g}s"
        )
        chunk = min(step, sleep_s - slept)
        await asyncio.sleep(chunk)
        slept += chunk


async def handle_echo(job: JobContext, payload: EchoPayload) -> EchoResult:
    """Echo `data` back after `sleep_s`; the first `fail_times` attempts fail retryably. No external effect.

    Only where the type is offered (SYSTEM_ECHO_ENABLED, by default ENVIRONMENT=development): a job that
    reaches a worker where it is not (queued before it was turned off, or by a gateway that offers it)
    fails at once rather than sleeping and failing on anyone's behalf.
    """
    if not job.worker.settings.job_types.echo_enabled:
        raise PermanentJobError(
            "system.echo is turned off here: it runs only where SYSTEM_ECHO_ENABLED=true (the default with"
            " ENVIRONMENT=development)",
            type_name="JobTypeDisabled",
        )
    if payload.sleep_s:
        await _sleep_reporting(job, payload.sleep_s)
    if job.attempt <= payload.fail_times:
        raise RetryableJobError(
            f"failing attempt {job.attempt} of the first {payload.fail_times}, as asked", type_name="EchoFailure"
        )
    return EchoResult(data=payload.data, attempt=job.attempt)


HANDLERS: list[AnyHandler] = [bind(SYSTEM_ECHO, handle_echo)]
