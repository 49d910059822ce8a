"""`report.generate`: ledger statistics over a period, as a CSV or JSON artifact, optionally mailed."""

from __future__ import annotations

import datetime as dt
from typing import Literal, Self

from pydantic import ConfigDict, EmailStr, Field, model_validator

from shared.jobs import Backoff, JobSpec, Payload, Queue, Result


class ReportPayload(Payload):
    # `from` is a Python keyword: the field is `from_`, stored and shown as `from`.
    model_config = ConfigDict(frozen=True, extra="forbid", validate_by_name=True, serialize_by_alias=True)

    period: Literal["day", "week", "month"] | None = Field(None, description="The last day, week or month.")
    from_: dt.datetime | None = Field(None, alias="from", description="Start (inclusive), with `to`.")
    to: dt.datetime | None = Field(None, description="End (exclusive), with `from`.")
    format: Literal["csv", "json"] = "csv"
    email_to: list[EmailStr] = Field(default_factory=list, max_length=50, description="Mail the report here.")

    @model_validator(mode="after")
    def _one_period(self) -> Self:
        if (self.period is None) == (self.from_ is None and self.to is None):
            raise ValueError("give either `period` or `from` and `to`")
        if self.period is None:
            if self.from_ is None or self.to is None:
                raise ValueError("`from` and `to` go together")
            if self.from_.tzinfo is None or self.to.tzinfo is None:
                raise ValueError("`from` and `to` need a time zone (RFC 3339)")
            if self.from_ >= self.to:
                raise ValueError("`from` must be before `to`")
            if self.to - self.from_ > dt.timedelta(days=366):
                raise ValueError("a report covers at most 366 days")
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
