"""The terms a route declaration (gateway.routing) documents itself in: bodies, request headers, and the
pieces several routes share.

`gateway.openapi` turns them into the OpenAPI document; query parameters are QueryParams of
`gateway.http.query`, which `gateway.http.params` enforces.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

EVENT_STREAM = "text/event-stream"


@dataclass(frozen=True, slots=True)
class Body:
    """A response or request body: a model (JSON) or a raw schema under a media type."""

    description: str
    model: type[BaseModel] | None = None
    media_type: str = "application/json"
    schema: Mapping[str, Any] | None = None
    headers: tuple[str, ...] = ()
    example: Any = None


@dataclass(frozen=True, slots=True)
class Header:
    """A request header an operation reads (a query parameter is a `gateway.http.query.QueryParam`)."""

    name: str
    schema: Mapping[str, Any]
    description: str = ""
    required: bool = False


def json_body(model: type[BaseModel], description: str = "", example: Any = None) -> tuple[Body, ...]:
    """A JSON request body of `model` (described by its docstring unless told)."""
    return (Body(description or model.__doc__ or model.__name__, model, example=example),)


def ok(model: type[BaseModel], description: str = "OK", *headers: str) -> Body:
    """A JSON response of `model`, with the response headers named (from `gateway.openapi.HEADERS`)."""
    return Body(description, model, headers=headers)


NO_CONTENT = Body("Done; no body.", media_type="")
BINARY: Mapping[str, Any] = {"type": "string", "contentMediaType": "application/octet-stream"}
# The request examples: the simplest job, which every job type shares.
ECHO = {"type": "system.echo", "payload": {"data": {"hello": "world"}}}
