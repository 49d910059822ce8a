"""Pure mapping from exceptions to (HTTP status, problem+json body); used by the error middleware."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from shared import errors

STATUS: Mapping[type[errors.ServiceError], int] = {
    errors.BadRequest: 400,
    errors.Unauthenticated: 401,
    errors.PermissionDenied: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.QuotaExceeded: 413,
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
    title: str | None = None,
    request_id: str | None = None,
    errors_: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": f"/problems/{code.replace('_', '-')}",
        "title": title or HTTPStatus(status).phrase,
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
    return status, problem(status, exc.code, exc.message, title=exc.title, request_id=request_id, errors_=exc.errors)


def from_http_exception(exc: web.HTTPException, request_id: str | None) -> tuple[int, dict[str, Any]]:
    status = exc.status
    code = _HTTP_SLUGS.get(status, "http_error")
    detail = {
        404: "no such route",
        405: f"method {exc.reason.lower()}",
        413: "the request body is larger than this server accepts",
    }.get(status, exc.reason)
    return status, problem(status, code, detail, request_id=request_id)


def validation_errors(exc: ValidationError, prefix: Sequence[str | int] = ()) -> list[dict[str, Any]]:
    """pydantic errors as `{loc, msg, type}`; input values are never echoed back."""
    return [{"loc": [*prefix, *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors(include_input=False)]


def internal(request_id: str | None) -> tuple[int, dict[str, Any]]:
    return 500, problem(
        500, "internal_error", "an unexpected error occurred; it has been logged", request_id=request_id
    )
