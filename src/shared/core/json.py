"""The one orjson dumps/loads pair plus the default hook (UUID, datetime, Decimal, pydantic models)."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any

import orjson
from pydantic import BaseModel

JSONDecodeError = orjson.JSONDecodeError


def _default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, BaseException):
        # arq stores exceptions in its result records; keep them readable, never pickled.
        return {"exc_type": type(value).__name__, "message": str(value)}
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps(value: Any) -> bytes:
    """Serialise to JSON bytes; datetimes come out as RFC 3339 in UTC with a `Z`."""
    return orjson.dumps(value, default=_default, option=orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC)


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    return orjson.loads(data)


def rfc3339(value: dt.datetime | None) -> str | None:
    """RFC 3339 in UTC with millisecond precision, as docs/api.md shows (`2026-11-23T19:30:00.123Z`)."""
    if value is None:
        return None
    utc = value.astimezone(dt.UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def canonical(value: Any) -> bytes:
    """Key-sorted JSON, for fingerprints that must not depend on key order."""
    return orjson.dumps(value, default=_default, option=orjson.OPT_SORT_KEYS | orjson.OPT_UTC_Z)
