"""`report.generate`: ledger statistics over a period, as a CSV or JSON artifact, optionally mailed."""

from __future__ import annotations

import datetime as dt
from typing import Literal, Self

from pydantic import ConfigDict, Field, JsonValue, model_validator

from shared.jobtypes.spec import Backoff, EmailAddress, JobSpec, Payload, Queue, Result, Timestamp

MAX_SPAN = dt.timedelta(days=366)
# `_one_period` as the published schema states it (that `from` comes before `to`, at most MAX_SPAN apart, is
# said in their descriptions: JSON Schema cannot compare two values).
_ONE_PERIOD: dict[str, JsonValue] = {
    "oneOf": [
        {
            "title": "period",
            "required": ["period"],
            "properties": {"period": {"type": "string"}, "from": {"type": "null"}, "to": {"type": "null"}},
        },
        {
            "title": "from and to",
            "required": ["from", "to"],
            "properties": {"period": {"type": "null"}, "from": {"type": "string"}, "to": {"type": "string"}},
        },
    ]
}


class ReportPayload(Payload):
    # `from` is a Python keyword: the field is `from_`, stored and shown as `from` (and only taken as `from`).
    model_config = ConfigDict(frozen=True, extra="forbid", serialize_by_alias=True, json_schema_extra=_ONE_PERIOD)

    period: Literal["day", "week", "month"] | None = Field(
        None, description="The last day, week or month; or give `from` and `to`."
    )
    from_: Timestamp | None = Field(None, alias="from", description="Start (inclusive), before `to`.")
    to: Timestamp | None = Field(None, description=f"End (exclusive), at most {MAX_SPAN.days} days after `from`.")
    format: Literal["csv", "json"] = "csv"
    email_to: list[EmailAddress] = Field(default_factory=list, max_length=50, description="Mail the report here.")

    @model_validator(mode="after")
    def _one_period(self) -> Self:
        if (self.period is None) == (self.from_ is None and self.to is None):
            raise ValueError("give either `period` or `from` and `to`")
        if self.period is None:
            if self.from_ is None or self.to is None:
                raise ValueError("`from` and `to` go together")
            if self.from_ >= self.to:
                raise ValueError("`from` must be before `to`")
            if self.to - self.from_ > MAX_SPAN:
                raise ValueError(f"a report covers at most {MAX_SPAN.days} days")
        return self


class ReportResult(Result):
    artifact_id: str
    url: str
    rows: int


REPORT_GENERATE: JobSpec[ReportPayload, ReportResult] = JobSpec(
    name="report.generate",
    description="Aggregate the ledger over a period (by type and status: counts, failure rate, durations, "
    "queue wait) into a CSV or JSON artifact; mail it when `email_to` is given.",
    queue=Queue.HEAVY,
    payload_model=ReportPayload,
    result_model=ReportResult,
    max_attempts=3,
    backoff=Backoff(kind="exponential", base_s=10.0, max_s=600.0, jitter=True),
    timeout_s=600.0,
    max_timeout_s=3600.0,
)
