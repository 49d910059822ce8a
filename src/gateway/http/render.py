"""API JSON, rendered in one place: every JSON body, problem, event-stream frame and the OpenAPI document
the gateway sends is made of bytes from `render` (orjson; datetimes as RFC 3339 in UTC with a `Z`)."""

from __future__ import annotations

from typing import Any

import orjson

from shared.core import json


def render(body: Any) -> bytes:
    """A JSON body as it goes on the wire."""
    return json.dumps(body)


def rendered(value: Any) -> orjson.Fragment:
    """`value` rendered now, to be embedded as is in a later `render` (a large field kept as its text)."""
    return orjson.Fragment(render(value))


def event_frame(event: str, data: Any, *, event_id: str | None = None) -> bytes:
    """One text/event-stream message: an optional `id:` line, `event:`, and `data:` with `data` rendered."""
    head = b"id: " + event_id.encode() + b"\n" if event_id is not None else b""
    return head + b"event: " + event.encode() + b"\ndata: " + render(data) + b"\n\n"
