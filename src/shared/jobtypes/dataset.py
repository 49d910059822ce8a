"""`dataset.analyze`: per-column statistics of an uploaded CSV, streamed in bounded memory."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shared.jobs import Backoff, JobSpec, Payload, Queue, Result


class DatasetPayload(Payload):
    upload_id: str = Field(min_length=1, max_length=64, description="An upload of the job's owner.")
    delimiter: str = Field(",", min_length=1, max_length=1, pattern=r"^[^\r\n\"]$")
    has_header: bool = True


class ColumnStats(Result):
    name: str
    type: Literal["integer", "float", "boolean", "string", "date", "datetime", "empty"]
    count: int = Field(description="Non-null values.")
    nulls: int
    min: float | int | str | None = None
    max: float | int | str | None = None
    mean: float | None = None
    stddev: float | None = None
    distinct_estimate: int


class DatasetResult(Result):
    rows: int
    columns: list[ColumnStats]


DATASET_ANALYZE: JobSpec[DatasetPayload, DatasetResult] = JobSpec(
    name="dataset.analyze",
    description="Infer each column's type and compute count, nulls, min, max, mean, stddev and a distinct "
    "estimate over an uploaded CSV; malformed files fail without retry.",
    queue=Queue.HEAVY,
    payload_model=DatasetPayload,
    result_model=DatasetResult,
    max_attempts=3,
    backoff=Backoff(kind="exponential", base_s=5.0, max_s=300.0, jitter=True),
    timeout_s=1800.0,
    max_timeout_s=7200.0,
)
