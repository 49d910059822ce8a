"""orjson-backed JSON and problem+json response helpers, and request body parsing."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from shared import json
from shared.errors import BadRequest, InvalidInput, UnsupportedMediaType

PROBLEM_JSON = "application/problem+json"


def json_response(body: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=json.dumps(body), status=status, content_type="application/json", headers=headers)


def problem_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=json.dumps(body), status=status, content_type=PROBLEM_JSON, headers=headers)


def _has_nul(value: Any) -> bool:
    """Whether any string (key or value) holds U+0000, which PostgreSQL cannot store."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object: 415 for another content type, 400 for malformed JSON, 413 past the limit."""
    if request.content_type != "application/json":
        raise UnsupportedMediaType("send the body as `application/json`")
    raw = await request.read()  # bounded by the app's client_max_size (MAX_BODY_BYTES): larger is a 413
    try:
        body = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc.msg} at position {exc.pos}") from exc
    if _has_nul(body):
        raise BadRequest("the body contains a NUL character (\\u0000), which is not accepted in any string")
    if not isinstance(body, dict):
        raise InvalidInput(
            "the body must be a JSON object",
            errors=[{"loc": ["body"], "msg": "must be an object", "type": "dict_type"}],
        )
    return body
