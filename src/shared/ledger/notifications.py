"""Notifications: stored in the ledger (idempotent on the job that made them), pushed over Redis pub/sub (db 0)."""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from typing import Any

import asyncpg

from shared.core import json
from shared.core.json import rfc3339
from shared.infra import events, pages
from shared.infra.db import Connection, Pool
from shared.infra.redis import CacheRedis


def new_notification_id() -> str:
    return "ntf_" + secrets.token_urlsafe(18)


@dataclass(frozen=True, slots=True)
class NotificationRecord:
    id: str
    owner: str
    title: str
    body: str
    kind: str
    job_id: str | None
    created_at: dt.datetime
    read_at: dt.datetime | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> NotificationRecord:
        return cls(**dict(row.items()))

    def resource(self) -> dict[str, Any]:
        """The public shape (docs/api.md), the same in lists, on `/read` and on the stream."""
        return {
            "id": self.id,
            "user": self.owner,
            "title": self.title,
            "body": self.body,
            "kind": self.kind,
            "job_id": self.job_id,
            "read": self.read_at is not None,
            "read_at": rfc3339(self.read_at),
            "created_at": rfc3339(self.created_at),
        }


_INSERT = """
INSERT INTO notifications (id, owner, title, body, kind, job_id)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (job_id) DO NOTHING
RETURNING *
"""


async def create(
    conn: Connection | Pool, *, owner: str, title: str, body: str, kind: str, job_id: str
) -> tuple[NotificationRecord, bool]:
    """Store the notification of `job_id`, or find the one an earlier run of that job stored.

    Returns:
        The record and whether this call created it.
    """
    row = await conn.fetchrow(_INSERT, new_notification_id(), owner, title, body, kind, job_id)
    if row is not None:
        return NotificationRecord.from_row(row), True
    # ON CONFLICT waited for the other writer to commit, so its row is visible to this new statement.
    earlier = await conn.fetchrow("SELECT * FROM notifications WHERE job_id = $1", job_id)
    if earlier is None:  # only if deleted in between; nothing in the service deletes notifications
        raise LookupError(f"the notification of job {job_id!r} vanished while it was being stored")
    return NotificationRecord.from_row(earlier), False


async def list_notifications(
    conn: Connection | Pool, *, owner: str | None, unread: bool, limit: int, cursor: str | None
) -> tuple[list[NotificationRecord], str | None]:
    """Newest first, keyset-paginated on (created_at, id); `owner=None` lists everyone's (admin)."""
    return await pages.newest_first(
        conn, "notifications", NotificationRecord.from_row, equal={"owner": owner}, limit=limit, cursor=cursor,
        conditions=["read_at IS NULL"] if unread else [], columns=pages.columns_of(NotificationRecord),
    )  # fmt: skip


async def newer_than(conn: Connection | Pool, *, owner: str, after_id: str, limit: int) -> list[NotificationRecord]:
    """The owner's notifications created after `after_id` (one of theirs), oldest first: a stream's catch-up
    on reconnect (`Last-Event-ID`). Empty when `after_id` is unknown or not theirs."""
    rows = await conn.fetch(
        """
        SELECT n.* FROM notifications n
        JOIN notifications last ON last.id = $2 AND last.owner = $1
        WHERE n.owner = $1 AND (n.created_at, n.id) > (last.created_at, last.id)
        ORDER BY n.created_at, n.id
        LIMIT $3
        """,
        owner,
        after_id,
        limit,
    )
    return [NotificationRecord.from_row(r) for r in rows]


async def mark_read(conn: Connection | Pool, notification_id: str, *, owner: str | None) -> NotificationRecord | None:
    """Mark read once (a second call keeps the first `read_at`); None when unknown or, with `owner`, not theirs."""
    row = await conn.fetchrow(
        """
        UPDATE notifications SET read_at = coalesce(read_at, now())
        WHERE id = $1 AND ($2::text IS NULL OR owner = $2)
        RETURNING *
        """,
        notification_id,
        owner,
    )
    return None if row is None else NotificationRecord.from_row(row)


async def publish(cache: CacheRedis, record: NotificationRecord) -> None:
    """Push the notification to its owner's open streams on every gateway; call only after the row committed."""
    message = {"kind": "notification", "notification": record.resource()}
    await cache.publish(events.notification_channel(record.owner), json.dumps(message))
