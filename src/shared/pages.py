"""Keyset pages, newest first on (created_at, id): the one cursor format and query of every list route."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import asyncpg

from shared import json
from shared.db import Connection, Pool
from shared.errors import BadRequest

# Times accepted from outside (cursors, run_at): anything else is a client error, not a 500.
MIN_TIME = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
MAX_TIME = dt.datetime(9000, 1, 1, tzinfo=dt.UTC)


class Keyed(Protocol):
    @property
    def created_at(self) -> dt.datetime: ...

    @property
    def id(self) -> str: ...


T = TypeVar("T", bound=Keyed)


def encode_cursor(item: Keyed) -> str:
    raw = json.dumps([item.created_at.isoformat(), item.id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    """Raises BadRequest for anything this API did not return as a cursor."""
    try:
        created, item_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        when = dt.datetime.fromisoformat(created)
        if when.tzinfo is None or not MIN_TIME <= when <= MAX_TIME:
            raise ValueError("cursor time out of range")
        return when, str(item_id)
    except (ValueError, TypeError, OverflowError, binascii.Error) as exc:
        raise BadRequest(
            "`cursor` is not a cursor this API returned", errors=[{"loc": ["query", "cursor"], "msg": "invalid cursor"}]
        ) from exc


async def newest_first(
    conn: Connection | Pool,
    table: str,
    from_row: Callable[[asyncpg.Record], T],
    *,
    equal: Mapping[str, Any],
    limit: int,
    cursor: str | None,
    conditions: Sequence[str] = (),
) -> tuple[list[T], str | None]:
    """One page of `table` and the cursor of the next (None on the last page).

    `equal` maps columns to the values they must hold (None: no condition); `conditions` are fixed SQL
    conditions. Table and column names come from code, never from a request.
    """
    clauses, args = list(conditions), []
    for column, value in equal.items():
        if value is not None:
            args.append(value)
            clauses.append(f"{column} = ${len(args)}")
    if cursor:
        args += decode_cursor(cursor)
        clauses.append(f"(created_at, id) < (${len(args) - 1}, ${len(args)})")
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    args.append(limit + 1)
    sql = f"SELECT * FROM {table}{where} ORDER BY created_at DESC, id DESC LIMIT ${len(args)}"  # noqa: S608 - names from code
    items = [from_row(r) for r in await conn.fetch(sql, *args)]
    page = items[:limit]
    return page, encode_cursor(page[-1]) if len(items) > limit and page else None
