"""`dataset.analyze`: per-column statistics of an uploaded CSV, streamed in bounded memory."""

from __future__ import annotations

from typing import Final, Literal

from pydantic import Field

from shared.jobtypes.spec import Backoff, JobSpec, Limits, Payload, Queue, Result

# The widest file analysed (a wider one fails as TooManyColumns); with names and string statistics cut to
# 50 characters, it bounds a result to well under the stored-result cap.
MAX_COLUMNS: Final = 200


class DatasetPayload(Payload):
    upload_id: str = Field(min_length=1, max_length=64, description="An upload of the job's owner.")
    delimiter: str = Field(",", min_length=1, max_length=1, pattern=r"^[^\r\n\"]$")
    has_header: bool = True


class ColumnStats(Result):
    name: str = Field(description="The header's name; a longer one is cut to 50 characters, ending in `…`.")
    type: Literal["integer", "float", "boolean", "string", "date", "datetime", "empty"]
    count: int = Field(description="Non-null values.")
    nulls: int
    min: float | int | str | None = Field(None, description="Strings are cut to 50 characters, like names.")
    max: float | int | str | None = None
    mean: float | None = None
    stddev: float | None = None
    distinct_estimate: int


class DatasetResult(Result):
    rows: int
    columns: list[ColumnStats] = Field(max_length=MAX_COLUMNS)


DATASET_ANALYZE: JobSpec[DatasetPayload, DatasetResult] = JobSpec(
    name="dataset.analyze",
    description="Infer each column's type and compute count, nulls, min, max, mean, stddev and a distinct "
    f"estimate over an uploaded CSV of at most {MAX_COLUMNS} columns; malformed or wider files fail without retry. "
    "One analysis per owner runs at a time.",
    queue=Queue.HEAVY,
    payload_model=DatasetPayload,
    result_model=DatasetResult,
    max_attempts=3,
    backoff=Backoff(kind="exponential", base_s=5.0, max_s=300.0, jitter=True),
    timeout_s=1800.0,
    max_timeout_s=7200.0,
    # One analysis per owner at a time, across every worker: an owner's queue of large files waits its
    # turn instead of filling the CPU pools other owners' analyses need.
    limits=Limits(concurrency_per_owner=1),
)
