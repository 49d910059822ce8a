"""Ledger statistics for `report.generate`: one SQL aggregate, streamed through a server-side cursor, and
its rows encoded as CSV or JSON chunk by chunk, so no report is ever held whole in memory.

Scope: the jobs of one owner (the ledger does not record the role a job was submitted with, so an
admin's report covers the admin's own jobs too), created in [start, end).

Per (type, status): `jobs`. Per type, repeated on each of its rows: `type_total`; `type_failure_rate`,
failed / (succeeded + failed), empty when none of them finished; p50/p95 of the duration
(finished_at - started_at) and of the queue wait (started_at - scheduled_for), both of the last attempt
(a retry moves `scheduled_for` to its due time), over the jobs that have them, in seconds.
"""

from __future__ import annotations

import abc
import csv
import datetime as dt
import io
from collections.abc import AsyncGenerator, Sequence
from dataclasses import astuple, dataclass, fields
from typing import Literal

from asyncpg import Record

from shared.core import json
from shared.infra.db import Pool

PERIODS: dict[str, dt.timedelta] = {
    "day": dt.timedelta(days=1),
    "week": dt.timedelta(days=7),
    "month": dt.timedelta(days=30),
}
# Rows PostgreSQL sends per round trip of the cursor.
PREFETCH = 500

# One pass over the owner's jobs: grouping sets give each type's row (GROUPING(status) = 1, sorted first)
# followed by its (type, status) rows, so the per-type figures are known before the rows that repeat them,
# without a join (which the planner may turn into re-aggregating per row).
_SQL = """
SELECT type, status, GROUPING(status) AS type_row, count(*) AS jobs,
       count(*) FILTER (WHERE status = 'failed') AS failed,
       count(*) FILTER (WHERE status IN ('succeeded', 'failed')) AS decided,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_s) AS duration_p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_s) AS duration_p95,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY wait_s) AS wait_p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY wait_s) AS wait_p95
FROM (
    SELECT type, status,
           extract(epoch FROM finished_at - started_at)::float8 AS duration_s,
           -- greatest() skips NULLs: without the CASE a job never started would count as a zero wait.
           CASE WHEN started_at IS NOT NULL THEN greatest(extract(epoch FROM started_at - scheduled_for)::float8, 0)
           END AS wait_s
    FROM jobs
    WHERE owner = $1 AND created_at >= $2 AND created_at < $3
) AS scoped
GROUP BY GROUPING SETS ((type), (type, status))
ORDER BY type, GROUPING(status) DESC, status
"""


@dataclass(frozen=True, slots=True)
class ReportRow:
    """One (type, status) group; the field order is the CSV's column order."""

    type: str
    status: str
    jobs: int
    type_total: int
    type_failure_rate: float | None
    type_duration_p50_s: float | None
    type_duration_p95_s: float | None
    type_queue_wait_p50_s: float | None
    type_queue_wait_p95_s: float | None


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(ReportRow))


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def period_bounds(
    period: str | None, start: dt.datetime | None, end: dt.datetime | None, *, now: dt.datetime
) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) in UTC: the last day, week (7 days) or month (30 days) up to `now`, or the given bounds."""
    if period is not None:
        return now - PERIODS[period], now
    if start is None or end is None:
        raise ValueError("give a period, or both bounds")
    return start.astimezone(dt.UTC), end.astimezone(dt.UTC)


async def stream_rows(
    pool: Pool, *, owner: str, start: dt.datetime, end: dt.datetime
) -> AsyncGenerator[ReportRow, None]:
    """The report's rows in (type, status) order, read from a server-side cursor `PREFETCH` rows at a time.

    Use under `contextlib.aclosing` so the cursor's transaction ends as soon as the caller stops.
    """
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        of_type: Record | None = None
        async for r in conn.cursor(_SQL, owner, start, end, prefetch=PREFETCH):
            if r["type_row"]:
                of_type = r
                continue
            assert of_type is not None  # noqa: S101 - ORDER BY puts each type's row before its groups
            yield ReportRow(
                type=r["type"], status=r["status"], jobs=r["jobs"], type_total=of_type["jobs"],
                type_failure_rate=_rounded(of_type["failed"] / of_type["decided"] if of_type["decided"] else None, 4),
                type_duration_p50_s=_rounded(of_type["duration_p50"], 3),
                type_duration_p95_s=_rounded(of_type["duration_p95"], 3),
                type_queue_wait_p50_s=_rounded(of_type["wait_p50"], 3),
                type_queue_wait_p95_s=_rounded(of_type["wait_p95"], 3),
            )  # fmt: skip


class Encoder(abc.ABC):
    """Turns the report into bytes piecewise: `begin()`, `rows(...)` for each chunk of rows, `end()`."""

    content_type: str
    extension: str

    @abc.abstractmethod
    def begin(self) -> bytes: ...

    @abc.abstractmethod
    def rows(self, rows: Sequence[ReportRow]) -> bytes: ...

    @abc.abstractmethod
    def end(self) -> bytes: ...


class CsvEncoder(Encoder):
    """A header line, then one line per row; an unknown value is an empty field."""

    content_type = "text/csv; charset=utf-8"
    extension = "csv"

    def begin(self) -> bytes:
        return self._lines([COLUMNS])

    def rows(self, rows: Sequence[ReportRow]) -> bytes:
        return self._lines([astuple(row) for row in rows])

    def end(self) -> bytes:
        return b""

    @staticmethod
    def _lines(lines: Sequence[Sequence[object]]) -> bytes:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerows([["" if v is None else v for v in line] for line in lines])
        return out.getvalue().encode()


class JsonEncoder(Encoder):
    """`{"owner", "from", "to", "generated_at", "columns", "rows": [{...}, ...]}`, written as the rows come."""

    content_type = "application/json"
    extension = "json"

    def __init__(self, *, owner: str, start: dt.datetime, end: dt.datetime, generated_at: dt.datetime) -> None:
        self._head = {"owner": owner, "from": start, "to": end, "generated_at": generated_at, "columns": COLUMNS}
        self._first = True

    def begin(self) -> bytes:
        return json.dumps(self._head)[:-1] + b',"rows":['

    def rows(self, rows: Sequence[ReportRow]) -> bytes:
        if not rows:
            return b""
        body = b",".join(json.dumps(dict(zip(COLUMNS, astuple(row), strict=True))) for row in rows)
        prefix, self._first = (b"" if self._first else b","), False
        return prefix + body

    def end(self) -> bytes:
        return b"]}"


def encoder_for(
    fmt: Literal["csv", "json"], *, owner: str, start: dt.datetime, end: dt.datetime, generated_at: dt.datetime
) -> Encoder:
    if fmt == "csv":
        return CsvEncoder()
    return JsonEncoder(owner=owner, start=start, end=end, generated_at=generated_at)
