"""Typed job registry: JobSpec (payload/result models, queue, policy) and the built-in models; pure data."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, EmailStr, Field, JsonValue, model_validator


class Queue(StrEnum):
    DEFAULT = "default"
    HEAVY = "heavy"
    SCHEDULER = "scheduler"


class Payload(BaseModel):
    """Base of job payloads: frozen, unknown fields refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    batch_id: str | None = Field(
        None, max_length=64, description="Set by Conveyor on a batch's `on_complete` job: the batch it completes."
    )


class Result(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


P = TypeVar("P", bound=Payload)
R = TypeVar("R", bound=Result)


@dataclass(frozen=True, slots=True)
class Backoff:
    kind: Literal["exponential", "fixed"] = "exponential"
    base_s: float = 1.0
    max_s: float = 300.0
    jitter: bool = True

    def delay_s(self, attempt: int, rng: random.Random | None = None) -> float:
        """Delay before the attempt after `attempt` (1-based); jitter keeps it within [delay/2, delay]."""
        raw = self.base_s if self.kind == "fixed" else self.base_s * 2 ** max(attempt - 1, 0)
        delay = min(raw, self.max_s)
        if self.jitter:
            delay = (rng or random).uniform(delay / 2, delay)
        return delay


@dataclass(frozen=True, slots=True)
class Limits:
    concurrency_per_owner: int | None = None
    per_second: float | None = None


@dataclass(frozen=True, slots=True)
class JobSpec(Generic[P, R]):
    """One job type: its contract (payload/result models) and its default policy."""

    name: str
    description: str
    queue: Queue
    payload_model: type[P]
    result_model: type[R]
    max_attempts: int = 5
    backoff: Backoff = field(default_factory=Backoff)
    timeout_s: float = 60.0
    max_timeout_s: float = 600.0
    limits: Limits = field(default_factory=Limits)

    def describe(self) -> dict[str, Any]:
        """The `/api/v1/job-types` item for this type."""
        return {
            "type": self.name,
            "queue": self.queue.value,
            "description": self.description,
            "max_attempts": self.max_attempts,
            "backoff": {
                "kind": self.backoff.kind,
                "base_s": self.backoff.base_s,
                "max_s": self.backoff.max_s,
                "jitter": self.backoff.jitter,
            },
            "timeout_s": self.timeout_s,
            "max_timeout_s": self.max_timeout_s,
            "limits": {
                "concurrency_per_owner": self.limits.concurrency_per_owner,
                "per_second": self.limits.per_second,
            },
            "payload_schema": self.payload_model.model_json_schema(),
            "result_schema": self.result_model.model_json_schema(),
        }


AnySpec = JobSpec[Any, Any]


class Registry:
    """An immutable name -> JobSpec map, built once per process."""

    def __init__(self, specs: Iterable[AnySpec]) -> None:
        by_name: dict[str, AnySpec] = {}
        for spec in specs:
            if spec.name in by_name:
                raise ValueError(f"job type {spec.name!r} is defined twice")
            by_name[spec.name] = spec
        self._specs: Mapping[str, AnySpec] = by_name

    def get(self, name: str) -> AnySpec | None:
        return self._specs.get(name)

    def __iter__(self) -> Any:
        return iter(sorted(self._specs.values(), key=lambda s: s.name))

    def __len__(self) -> int:
        return len(self._specs)

    def names(self) -> list[str]:
        return sorted(self._specs)


# --- system.echo ---------------------------------------------------------------------------------


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


# --- email.send ----------------------------------------------------------------------------------


class EmailPayload(Payload):
    to: list[EmailStr] = Field(min_length=1, max_length=50)
    cc: list[EmailStr] = Field(default_factory=list, max_length=50)
    bcc: list[EmailStr] = Field(default_factory=list, max_length=50)
    subject: str = Field(min_length=1, max_length=998)
    text: str | None = Field(None, max_length=512 * 1024)
    html: str | None = Field(None, max_length=512 * 1024)
    reply_to: EmailStr | None = None

    @model_validator(mode="after")
    def _has_a_body(self) -> EmailPayload:
        if self.text is None and self.html is None:
            raise ValueError("give `text`, `html` or both")
        if any(c in self.subject for c in "\r\n"):
            raise ValueError("subject must be a single line")
        return self


class EmailResult(Result):
    message_id: str
    accepted: list[str]
    refused: dict[str, str]


EMAIL_SEND: JobSpec[EmailPayload, EmailResult] = JobSpec(
    name="email.send",
    description="Send a transactional email over SMTP; a refused recipient fails the job, transient errors retry.",
    queue=Queue.DEFAULT,
    payload_model=EmailPayload,
    result_model=EmailResult,
    max_attempts=8,
    backoff=Backoff(kind="exponential", base_s=5.0, max_s=900.0, jitter=True),
    timeout_s=60.0,
    max_timeout_s=300.0,
)


BUILTIN_SPECS: tuple[AnySpec, ...] = (SYSTEM_ECHO, EMAIL_SEND)


def builtin_registry() -> Registry:
    return Registry(BUILTIN_SPECS)
