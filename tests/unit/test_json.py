"""The one JSON pair: RFC 3339 UTC times, no pickle-only types."""

from __future__ import annotations

import datetime as dt
import uuid

from shared.core import json


def test_rfc3339_is_utc_with_milliseconds() -> None:
    when = dt.datetime(2026, 11, 23, 20, 30, 0, 123456, tzinfo=dt.timezone(dt.timedelta(hours=1)))

    assert json.rfc3339(when) == "2026-11-23T19:30:00.123Z"


def test_dumps_handles_the_types_jobs_carry() -> None:
    value = {"id": uuid.UUID(int=1), "err": ValueError("boom"), "tags": {"b", "a"}}

    assert json.loads(json.dumps(value)) == {
        "id": "00000000-0000-0000-0000-000000000001",
        "err": {"exc_type": "ValueError", "message": "boom"},
        "tags": ["a", "b"],
    }


def test_canonical_is_independent_of_key_order() -> None:
    assert json.canonical({"b": 1, "a": 2}) == json.canonical({"a": 2, "b": 1})
