"""Recurring jobs: the request models, cron arithmetic in a time zone, and the ledger's schedule queries."""

from __future__ import annotations

import datetime as dt
import functools
import secrets
import zoneinfo
from dataclasses import dataclass
from typing import Any, Literal, Self

import asyncpg
from cronsim import CronSim, CronSimError
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.core.errors import Conflict
from shared.core.status import UNFINISHED
from shared.infra import pages
from shared.infra.db import Connection, Pool
from shared.jobtypes.spec import Timestamp
from shared.ledger import owner_caps
from shared.ledger.submission import KeylessJobRequest

Overlap = Literal["allow", "skip_if_running"]
# Why a due fire time made no job (`last_skip_reason`).
SkipReason = Literal["queue_cap", "overlap", "invalid_job", "error"]
# How long a schedule whose fire raised waits before it is tried again (it never holds up the others).
RETRY_FAILED_S = 60.0


def next_fire(cron: str, timezone: str, after: dt.datetime) -> dt.datetime:
    """The first fire time strictly after `after`, computed in the schedule's zone (DST-correct), in UTC."""
    local = after.astimezone(zoneinfo.ZoneInfo(timezone)).replace(microsecond=0)
    for candidate in CronSim(cron, local):
        if candidate > after:
            return candidate.astimezone(dt.UTC)
    raise ValueError("the cron expression never fires")  # pragma: no cover - CronSim is infinite


def _check_cron(value: str) -> str:
    try:
        CronSim(value, dt.datetime.now(dt.UTC))
    except CronSimError as exc:
        raise ValueError(f"not a valid cron expression: {exc}") from exc
    return value


@functools.cache
def time_zones() -> frozenset[str]:
    """The IANA time zones this host knows (the published enum of `timezone`)."""
    return frozenset(zoneinfo.available_timezones())


def _check_timezone(value: str) -> str:
    if value not in time_zones():
        raise ValueError("not a known IANA time zone (e.g. `Europe/Paris`)")
    return value


def _zones_schema(schema: dict[str, Any]) -> None:
    """`timezone` is one of time_zones() (a callable: the list is read when the schema is built)."""
    schema.pop("maxLength", None)
    if "anyOf" in schema:  # `str | None`
        schema["anyOf"][0] = {"type": "string", "enum": sorted(time_zones())}
    else:
        schema["enum"] = sorted(time_zones())


class ScheduleRequest(BaseModel):
    """The body of `POST /api/v1/schedules`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    cron: str = Field(min_length=1, max_length=200, description="Five fields: minute hour day month weekday.")
    timezone: str = Field(
        "UTC", max_length=64, description="An IANA time zone, e.g. `Europe/Paris`.", json_schema_extra=_zones_schema
    )
    job: KeylessJobRequest = Field(description="The job each run enqueues (no idempotency key: each run is unique).")
    start_at: Timestamp | None = None
    end_at: Timestamp | None = Field(None, description="After `start_at` when both are given.")
    enabled: bool = True
    overlap: Overlap = "allow"

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        return _check_cron(value)

    @field_validator("timezone")
    @classmethod
    def _valid_timezone(cls, value: str) -> str:
        return _check_timezone(value)

    @model_validator(mode="after")
    def _window(self) -> Self:
        if self.start_at and self.end_at and self.end_at <= self.start_at:
            raise ValueError("`end_at` must come after `start_at`")
        return self


class SchedulePatch(BaseModel):
    """The body of `PATCH /api/v1/schedules/{id}`: only the fields given change."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool | None = None
    cron: str | None = Field(None, min_length=1, max_length=200)
    timezone: str | None = Field(
        None, max_length=64, description="An IANA time zone, e.g. `Europe/Paris`.", json_schema_extra=_zones_schema
    )
    job: KeylessJobRequest | None = Field(None, description="The job each run enqueues (no idempotency key).")
    end_at: Timestamp | None = None

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        return None if value is None else _check_cron(value)

    @field_validator("timezone")
    @classmethod
    def _valid_timezone(cls, value: str | None) -> str | None:
        return None if value is None else _check_timezone(value)


@dataclass(frozen=True, slots=True)
class Schedule:
    id: str
    owner: str
    name: str
    cron: str
    timezone: str
    job: dict[str, Any]
    start_at: dt.datetime | None
    end_at: dt.datetime | None
    enabled: bool
    overlap: str
    next_run_at: dt.datetime | None
    last_run_at: dt.datetime | None
    last_job_id: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    created_with_key: str | None  # the API key it was created with; None: a JWT (see shared.accounts.api_keys.standing)
    disabled_reason: str | None  # set when Conveyor disabled it: `owner_revoked`, `owner_not_allowed`
    last_skipped_at: dt.datetime | None
    last_skip_reason: str | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Schedule:
        return cls(**dict(row.items()))


def first_run(cron: str, timezone: str, start_at: dt.datetime | None, end_at: dt.datetime | None) -> dt.datetime | None:
    now = dt.datetime.now(dt.UTC)
    after = max(now, start_at - dt.timedelta(seconds=1)) if start_at else now
    when = next_fire(cron, timezone, after)
    return None if end_at is not None and when > end_at else when


async def create(
    pool: Pool, owner: str, request: ScheduleRequest, *, cap: int, created_with_key: str | None = None
) -> Schedule:
    """Record a schedule, if the owner keeps at most `cap` (MAX_SCHEDULES_PER_OWNER) with it.

    Raises:
        ScheduleLimitReached: the owner already has `cap` schedules.
        Conflict: the owner already has a schedule of that name.
    """
    async with pool.acquire() as conn, conn.transaction():
        await owner_caps.lock_schedules(conn, owner, cap=cap)
        try:
            row = await conn.fetchrow(
                """
                INSERT INTO schedules (id, owner, name, cron, timezone, job, start_at, end_at, enabled, overlap,
                                       next_run_at, created_with_key)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING *
                """,
                "sch_" + secrets.token_urlsafe(18), owner, request.name, request.cron, request.timezone,
                request.job.model_dump(mode="json"), request.start_at, request.end_at, request.enabled,
                request.overlap, first_run(request.cron, request.timezone, request.start_at, request.end_at),
                created_with_key,
            )  # fmt: skip
        except asyncpg.UniqueViolationError as exc:
            raise Conflict(f"you already have a schedule named {request.name!r}") from exc
    assert row is not None  # noqa: S101 - INSERT … RETURNING always returns the row
    return Schedule.from_row(row)


async def get(conn: Connection | Pool, schedule_id: str) -> Schedule | None:
    row = await conn.fetchrow("SELECT * FROM schedules WHERE id = $1", schedule_id)
    return None if row is None else Schedule.from_row(row)


async def list_for(
    conn: Connection | Pool, owner: str | None, *, limit: int, cursor: str | None
) -> tuple[list[Schedule], str | None]:
    """Newest first, keyset-paginated like every list; `owner=None` lists everyone's (admin)."""
    return await pages.newest_first(
        conn, "schedules", Schedule.from_row, equal={"owner": owner}, limit=limit, cursor=cursor,
        columns=pages.columns_of(Schedule),
    )  # fmt: skip


async def update(conn: Connection | Pool, current: Schedule, patch: SchedulePatch) -> Schedule:
    cron = patch.cron or current.cron
    timezone = patch.timezone or current.timezone
    end_at = patch.end_at if "end_at" in patch.model_fields_set else current.end_at
    enabled = current.enabled if patch.enabled is None else patch.enabled
    job = patch.job.model_dump(mode="json") if patch.job else current.job
    # Enabling it again (an admin, say, once the owner has a live key) clears why Conveyor disabled it: the
    # next fire checks the owner's standing anew.
    row = await conn.fetchrow(
        """
        UPDATE schedules SET cron = $2, timezone = $3, end_at = $4, enabled = $5, job = $6, next_run_at = $7,
                             disabled_reason = CASE WHEN $5 THEN NULL ELSE disabled_reason END, updated_at = now()
        WHERE id = $1 RETURNING *
        """,
        current.id, cron, timezone, end_at, enabled, job, first_run(cron, timezone, current.start_at, end_at),
    )  # fmt: skip
    if row is None:
        raise Conflict("the schedule was deleted meanwhile")
    return Schedule.from_row(row)


async def delete(conn: Connection | Pool, schedule_id: str) -> None:
    await conn.execute("DELETE FROM schedules WHERE id = $1", schedule_id)


async def claim_due(conn: Connection, *, limit: int) -> list[Schedule]:
    """Inside a transaction: lock due schedules; another scheduler skips the ones this one holds."""
    rows = await conn.fetch(
        """
        SELECT * FROM schedules WHERE enabled AND next_run_at <= now()
        ORDER BY next_run_at LIMIT $1 FOR UPDATE SKIP LOCKED
        """,
        limit,
    )
    return [Schedule.from_row(r) for r in rows]


async def record_run(conn: Connection, schedule_id: str, fire_time: dt.datetime) -> bool:
    """Claim one fire time; False if it was already fired (the unique key, not timing, decides)."""
    row = await conn.fetchrow(
        """
        INSERT INTO schedule_runs (schedule_id, fire_time) VALUES ($1, $2)
        ON CONFLICT DO NOTHING RETURNING schedule_id
        """,
        schedule_id,
        fire_time,
    )
    return row is not None


async def advance(
    conn: Connection, schedule: Schedule, *, fired_at: dt.datetime, job_id: str | None, next_run_at: dt.datetime | None,
    skipped: SkipReason | None = None,
) -> None:  # fmt: skip
    """Move the schedule past `fired_at`: to the job it made, or to why it made none (`skipped`)."""
    await conn.execute(
        """
        UPDATE schedules SET next_run_at = $2, last_run_at = $3, last_job_id = coalesce($4, last_job_id),
                             last_skipped_at = CASE WHEN $5::text IS NULL THEN last_skipped_at ELSE $3 END,
                             last_skip_reason = coalesce($5, last_skip_reason), updated_at = now()
        WHERE id = $1
        """,
        schedule.id, next_run_at, fired_at, job_id, skipped,
    )  # fmt: skip
    if job_id is not None:
        await conn.execute(
            "UPDATE schedule_runs SET job_id = $3 WHERE schedule_id = $1 AND fire_time = $2",
            schedule.id,
            fired_at,
            job_id,
        )


async def disable(conn: Connection, schedule_id: str, *, reason: str) -> None:
    """Conveyor turns a schedule off (its owner lost their standing), saying why in `disabled_reason`."""
    await conn.execute(
        "UPDATE schedules SET enabled = false, disabled_reason = $2, updated_at = now() WHERE id = $1",
        schedule_id,
        reason,
    )


async def postpone(conn: Connection, schedule_id: str, *, fire_time: dt.datetime) -> None:
    """A fire that raised: try that schedule again in RETRY_FAILED_S (after the schedules due meanwhile)."""
    await conn.execute(
        """
        UPDATE schedules SET next_run_at = now() + make_interval(secs => $2), last_skipped_at = $3,
                             last_skip_reason = 'error', updated_at = now()
        WHERE id = $1
        """,
        schedule_id,
        RETRY_FAILED_S,
        fire_time,
    )


async def is_running(conn: Connection, job_id: str | None) -> bool:
    if job_id is None:
        return False
    status = await conn.fetchval("SELECT status FROM jobs WHERE id = $1", job_id)
    return status in UNFINISHED
