"""Pure mapping from exceptions to (HTTP status, problem+json body); used by the error middleware.

Whatever raised it (a ServiceError, aiohttp's router, a pydantic ValidationError, the body limit), a
problem's `title` comes from one table, TITLES, by status: one status, one title, everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any, Final

from aiohttp import web
from pydantic import ValidationError

from shared.core import errors

# RFC 9110's reason phrases, written out so that a Python upgrade cannot change them.
TITLES: Final[Mapping[int, str]] = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class BodyTooLarge(errors.ServiceError):
    """A request body (JSON or an upload) past its byte limit; the detail says the limit."""

    code = "payload_too_large"

    def __init__(self, limit_bytes: int, *, what: str = "the request body", setting: str = "MAX_BODY_BYTES") -> None:
        readable = f"{human_bytes(limit_bytes)}, " if limit_bytes >= 1024 else ""
        super().__init__(
            f"{what} is larger than this server accepts: at most {limit_bytes} bytes ({readable}{setting})"
        )
        self.limit_bytes = limit_bytes


STATUS: Mapping[type[errors.ServiceError], int] = {
    errors.BadRequest: 400,
    errors.Unauthenticated: 401,
    errors.PermissionDenied: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.StorageQuotaExceeded: 413,
    BodyTooLarge: 413,
    errors.UnsupportedMediaType: 415,
    errors.InvalidInput: 422,
    errors.RateLimited: 429,
    errors.DependencyUnavailable: 503,
}

_HTTP_SLUGS: Mapping[int, str] = {
    400: "bad_request",
    401: "unauthenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    429: "rate_limited",
    503: "dependency_unavailable",
}
_AIOHTTP_MAX_SIZE = re.compile(r"Maximum request body size (\d+)")


def human_bytes(n: int) -> str:
    """`1048576` -> `1 MiB`, `1500` -> `1.5 KiB`: binary units, at most one decimal."""
    value, unit = float(n), "bytes"
    for next_unit in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, next_unit
    return f"{n} bytes" if unit == "bytes" else f"{value:.1f}".removesuffix(".0") + f" {unit}"


def title_for(status: int) -> str:
    return TITLES.get(status) or HTTPStatus(status).phrase


def status_for(exc: errors.ServiceError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def problem(
    status: int,
    code: str,
    detail: str,
    *,
    request_id: str | None = None,
    errors_: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": f"/problems/{code.replace('_', '-')}",
        "title": title_for(status),
        "status": status,
        "detail": detail,
        "code": code,
    }
    if errors_ is not None:
        body["errors"] = list(errors_)
    if request_id:
        body["request_id"] = request_id
    return body


def from_service_error(exc: errors.ServiceError, request_id: str | None) -> tuple[int, dict[str, Any]]:
    status = status_for(exc)
    return status, problem(status, exc.code, exc.message, request_id=request_id, errors_=exc.errors)


def _http_detail(exc: web.HTTPException) -> str:
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return f"{exc.method} is not allowed on this route; it allows {allowed} (see the Allow header)"
    if exc.status == 404:
        return "no such route"
    if exc.status == 413:
        found = _AIOHTTP_MAX_SIZE.search(exc.text or "")
        if found is not None:
            return BodyTooLarge(int(found[1])).message
        return "the request body is larger than this server accepts"
    return exc.reason


def from_http_exception(exc: web.HTTPException, request_id: str | None) -> tuple[int, dict[str, Any]]:
    status = exc.status
    return status, problem(status, _HTTP_SLUGS.get(status, "http_error"), _http_detail(exc), request_id=request_id)


def validation_errors(exc: ValidationError, prefix: Sequence[str | int] = ()) -> list[dict[str, Any]]:
    """pydantic errors as `{loc, msg, type}`; input values are never echoed back."""
    return [{"loc": [*prefix, *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors(include_input=False)]


def internal(request_id: str | None) -> tuple[int, dict[str, Any]]:
    return 500, problem(
        500, "internal_error", "an unexpected error occurred; it has been logged", request_id=request_id
    )
