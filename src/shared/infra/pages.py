"""Keyset pages, newest first on (created_at, id): the one cursor format and query of every list route."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Protocol, TypeVar

import asyncpg

from shared.core.errors import BadRequest
from shared.infra.db import Connection, Pool

# The earliest `run_at` accepted from outside: anything earlier is a client error, not a 500.
MIN_TIME = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
# A cursor is `<created_at in microseconds since the epoch>.<id>`: every string of this form is a position
# (a time and an id to continue below), so it can be published as a pattern that the API keeps exactly.
# 17 digits reach the year 5138, far past any row's creation time.
CURSOR_PATTERN: Final = r"^[0-9]{1,17}\.[A-Za-z0-9_-]{1,64}$"
_CURSOR = re.compile(CURSOR_PATTERN.removesuffix("$") + r"\Z")
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND: Final = dt.timedelta(microseconds=1)


class Keyed(Protocol):
    @property
    def created_at(self) -> dt.datetime: ...

    @property
    def id(self) -> str: ...


T = TypeVar("T", bound=Keyed)


def columns_of(record: type[Any]) -> tuple[str, ...]:
    """The columns a record dataclass holds, in order: what a list of them selects, rather than `*`."""
    return tuple(f.name for f in dataclasses.fields(record))


def encode_cursor(item: Keyed) -> str:
    """The position just below `item` (rows are created after the epoch: the time part is never negative)."""
    return f"{(item.created_at - _EPOCH) // _MICROSECOND}.{item.id}"


def decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    """(created_at, id) of a cursor; any string matching CURSOR_PATTERN is one.

    Raises:
        BadRequest: `cursor` does not match CURSOR_PATTERN.
    """
    if _CURSOR.match(cursor) is None:
        raise BadRequest(
            f"`cursor` must match {CURSOR_PATTERN} (the `next_cursor` of a page)",
            errors=[{"loc": ["query", "cursor"], "msg": "invalid cursor"}],
        )
    micros, item_id = cursor.split(".", 1)
    return _EPOCH + int(micros) * _MICROSECOND, item_id


async def newest_first(
    conn: Connection | Pool,
    table: str,
    from_row: Callable[[asyncpg.Record], T],
    *,
    equal: Mapping[str, Any],
    limit: int,
    cursor: str | None,
    columns: Sequence[str],
    conditions: Sequence[str] = (),
) -> tuple[list[T], str | None]:
    """One page of `table` and the cursor of the next (None on the last page).

    `equal` maps columns to the values they must hold (None: no condition); `conditions` are fixed SQL
    conditions; `columns` are the columns read, which every list names so that it never loads what it does
    not show (a page of 200 rows with a large JSON column each is gigabytes once decoded; a column added to
    a table later is not read by its list until the record holds it). Table and column names come from code,
    never from a request.
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
    sql = f"SELECT {', '.join(columns)} FROM {table}{where} ORDER BY created_at DESC, id DESC LIMIT ${len(args)}"  # noqa: S608 - names from code
    items = [from_row(r) for r in await conn.fetch(sql, *args)]
    page = items[:limit]
    return page, encode_cursor(page[-1]) if len(items) > limit and page else None
