"""Typed job registry: JobSpec (payload/result models, queue, policy), Registry; pure data.

The built-in types live one per module in `shared.jobtypes`."""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, Final, Generic, Literal, TypeVar

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    EmailStr,
    Field,
    JsonValue,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
)


class Queue(StrEnum):
    DEFAULT = "default"
    HEAVY = "heavy"
    SCHEDULER = "scheduler"


# RFC 3339's date-time, the published `format: date-time`, in the years 2000 to 8999 as written: a time with
# its offset, far from the ends of what Python and PostgreSQL can hold (an offset can move a time across a
# year). pydantic alone would also take `2030-01-01 09:00Z`, `+0100` or a Unix time in a string.
TIMESTAMP_PATTERN: Final = (
    r"^(2[0-9]{3}|[3-8][0-9]{3})-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)
_TIMESTAMP = re.compile(TIMESTAMP_PATTERN.removesuffix("$"))
_TIME = TypeAdapter(AwareDatetime)


def _rfc3339(value: object) -> object:
    """A string as the time it writes, or ValueError (other values are left to the field's own validation)."""
    if not isinstance(value, str):
        return value
    if _TIMESTAMP.fullmatch(value) is None:
        raise ValueError("must be an RFC 3339 date-time with an offset, in the years 2000 to 8999")
    try:
        # Parsed here, not by the field: after this validator even a strict field would refuse a string.
        return _TIME.validate_python(value)
    except ValidationError as exc:
        raise ValueError(exc.errors()[0]["msg"]) from None


# A time from outside (a request or a payload).
Timestamp = Annotated[
    AwareDatetime,
    BeforeValidator(_rfc3339),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": TIMESTAMP_PATTERN}),
]


def _unpadded(value: object) -> object:
    if isinstance(value, str) and value != value.strip():
        raise ValueError("an email address has no surrounding spaces")
    return value


# A mail address, internationalized ones included (SMTPUTF8): published as `idn-email`; pydantic alone would
# also take (and strip) surrounding spaces, which that format refuses.
EmailAddress = Annotated[
    EmailStr, BeforeValidator(_unpadded), WithJsonSchema({"type": "string", "format": "idn-email"})
]

# Marks a payload field secret: `Field(..., json_schema_extra=SECRET)`. It is encrypted at rest (Redis and
# PostgreSQL, see shared.infra.sealing), shown as "[redacted]", and flagged `x-secret` in the published schema.
SECRET: dict[str, JsonValue] = {"x-secret": True}


@functools.cache
def _secret_fields(model: type[BaseModel]) -> tuple[tuple[str, ...], ...]:
    """The fields of a payload model marked SECRET: fixed once the class exists, so found once per class."""
    return tuple(
        (field.alias or name,)
        for name, field in model.model_fields.items()
        if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("x-secret")
    )


class Payload(BaseModel):
    """Base of job payloads: frozen, unknown fields refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def secret_paths(self) -> list[tuple[str, ...]]:
        """Where the secret values of this payload are: the fields marked SECRET (override to add more)."""
        return list(_secret_fields(type(self)))

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
    # A payload field naming the principal the job acts for (e.g. a notification's `user`): a `user` may
    # only name itself there; an admin may name anyone.
    on_behalf_of: str | None = None

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
