"""`system.echo`: echo data back, optionally after a sleep or failures (drills, tests, benchmarks)."""

from __future__ import annotations

from pydantic import Field, JsonValue

from shared.jobtypes.spec import Backoff, JobSpec, Payload, Queue, Result


class EchoPayload(Payload):
    data: JsonValue = None
    sleep_s: float = Field(0.0, ge=0, le=60)
    fail_times: int = Field(0, ge=0, le=25, description="Fail the first n attempts, retryably.")


class EchoResult(Result):
    data: JsonValue = None
    attempt: int


SYSTEM_ECHO: JobSpec[EchoPayload, EchoResult] = JobSpec(
    name="system.echo",
    description="Echo `data` back after `sleep_s`; fails the first `fail_times` attempts (for tests and drills).",
    queue=Queue.DEFAULT,
    payload_model=EchoPayload,
    result_model=EchoResult,
    max_attempts=5,
    backoff=Backoff(kind="exponential", base_s=0.5, max_s=30.0, jitter=True),
    timeout_s=90.0,
    max_timeout_s=300.0,
)
