"""orjson-backed JSON and problem+json response helpers, and request body parsing and validation."""

from __future__ import annotations

from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel

from gateway.http.errors import BodyTooLarge
from gateway.http.render import render
from gateway.keys import SETTINGS
from shared.core import json
from shared.core.errors import BadRequest, InvalidInput, UnsupportedMediaType

M = TypeVar("M", bound=BaseModel)

PROBLEM_JSON = "application/problem+json"


def json_response(body: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=render(body), status=status, content_type="application/json", headers=headers)


def problem_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=render(body), status=status, content_type=PROBLEM_JSON, headers=headers)


MAX_DEPTH = 32  # nesting of a request body; orjson alone stops at 1024 (255 in older releases)


def _check_strings_and_depth(value: Any) -> None:
    """Refuse U+0000 in any string (key or value; PostgreSQL cannot store it) and nesting past MAX_DEPTH."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise BadRequest("the body contains a NUL character (\\u0000), which is not accepted in any string")
        elif isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                raise _too_deep()
            if isinstance(item, dict):
                stack.extend((key, depth) for key in item)
                stack.extend((child, depth + 1) for child in item.values())
            else:
                stack.extend((child, depth + 1) for child in item)


def _too_deep() -> InvalidInput:
    return InvalidInput(
        f"the body is nested deeper than {MAX_DEPTH} levels",
        errors=[{"loc": ["body"], "msg": f"at most {MAX_DEPTH} levels of nesting", "type": "too_deep"}],
    )


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object: 415 for another content type, 400 for malformed JSON, 413 past the
    size limit, 422 past MAX_DEPTH levels of nesting."""
    if request.content_type != "application/json":
        raise UnsupportedMediaType("send the body as `application/json`")
    try:
        raw = await request.read()  # bounded by the app's client_max_size (MAX_BODY_BYTES)
    except web.HTTPRequestEntityTooLarge as exc:
        raise BodyTooLarge(request.app[SETTINGS].gateway.max_body_bytes) from exc
    try:
        body = json.loads(raw)
    except json.JSONDecodeError as exc:
        if "depth" in exc.msg or "recursion" in exc.msg.lower():  # orjson's own depth limit, far past ours
            raise _too_deep() from exc
        raise BadRequest(f"the body is not valid JSON: {exc.msg} at position {exc.pos}") from exc
    _check_strings_and_depth(body)
    if not isinstance(body, dict):
        raise InvalidInput(
            "the body must be a JSON object",
            errors=[{"loc": ["body"], "msg": "must be an object", "type": "dict_type"}],
        )
    return body


def _integral_floats_as_ints(value: Any) -> Any:
    """`7.0` as `7`: JSON Schema counts a number with no fractional part as an integer, and so do we."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    if isinstance(value, dict):
        return {k: _integral_floats_as_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral_floats_as_ints(v) for v in value]
    return value


def validate_body(model: type[M], body: dict[str, Any], *, context: dict[str, Any] | None = None) -> M:
    """`body` as `model`, with no coercion the published schema does not allow: a boolean is never a number,
    a number never a time, a string never a number (pydantic's strict mode, over JSON).

    Raises:
        ValidationError: the body does not match (the error middleware answers 422).
    """
    return model.model_validate_json(json.dumps(_integral_floats_as_ints(body)), strict=True, context=context)


async def read_model(request: web.Request, model: type[M]) -> M:
    """The request body (see `read_json`) validated as `model` by `validate_body`."""
    return validate_body(model, await read_json(request))
