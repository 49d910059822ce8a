"""One error table: every ServiceError maps to its status by walking the MRO; 500s say nothing inside; one
title per status, whatever raised the error."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest
from aiohttp import web
from pydantic import BaseModel, ValidationError

from gateway.http.errors import (
    STATUS,
    TITLES,
    BodyTooLarge,
    from_http_exception,
    from_service_error,
    human_bytes,
    internal,
    problem,
    status_for,
    validation_errors,
)
from shared.core import errors


class _NotFoundSubclass(errors.NotFound):
    pass


class _Strict(BaseModel):
    n: int


def test_subclasses_inherit_their_parents_status() -> None:
    assert status_for(_NotFoundSubclass("x")) == 404
    assert status_for(errors.RateLimited("slow down", retry_after_s=3)) == 429
    assert status_for(errors.ServiceError("?")) == 500


def test_problem_body_follows_rfc_9457() -> None:
    status, body = from_service_error(
        errors.InvalidInput("bad", errors=[{"loc": ["payload", "to", 0], "msg": "not an email"}]), "rid"
    )

    assert status == 422
    assert body == {
        "type": "/problems/invalid-input", "title": "Unprocessable Content", "status": 422, "detail": "bad",
        "code": "invalid_input", "errors": [{"loc": ["payload", "to", 0], "msg": "not an email"}], "request_id": "rid",
    }  # fmt: skip


def test_internal_errors_reveal_nothing() -> None:
    status, body = internal("rid")

    assert status == 500
    assert set(body) == {"type", "title", "status", "detail", "code", "request_id"}


def _service_error(cls: type[errors.ServiceError]) -> errors.ServiceError:
    if cls is errors.RateLimited:
        return errors.RateLimited("slow down", retry_after_s=1)
    if cls is BodyTooLarge:
        return BodyTooLarge(1024)
    if cls is errors.StorageQuotaExceeded:
        return errors.StorageQuotaExceeded("full", used=2048, quota=1024)
    return cls("x")


def test_every_source_of_an_error_gives_its_status_the_same_title() -> None:
    with pytest.raises(ValidationError) as invalid:
        _Strict.model_validate({"n": "x"})
    bodies: list[dict[str, Any]] = [from_service_error(_service_error(cls), None)[1] for cls in STATUS]
    bodies += [
        from_http_exception(exc, None)[1]
        for exc in (
            web.HTTPNotFound(),
            web.HTTPMethodNotAllowed("DELETE", ["GET", "POST"]),
            web.HTTPRequestEntityTooLarge(max_size=1024, actual_size=2048),
            web.HTTPBadRequest(),
            web.HTTPUnsupportedMediaType(),
        )
    ]
    bodies.append(
        problem(422, "invalid_input", "schema", errors_=validation_errors(invalid.value))
    )  # as the middleware
    bodies.append(internal(None)[1])

    titles: dict[int, set[str]] = defaultdict(set)
    for body in bodies:
        titles[body["status"]].add(body["title"])

    assert {404, 405, 413, 422, 500} <= set(titles)
    assert titles == {status: {TITLES[status]} for status in titles}


def test_the_title_table_is_the_only_source_of_titles() -> None:
    assert not [cls.__name__ for cls in STATUS if hasattr(cls, "title")]


def test_a_405_names_the_method_and_the_allowed_ones_once() -> None:
    status, body = from_http_exception(web.HTTPMethodNotAllowed("DELETE", ["POST", "GET"]), None)

    assert status == 405
    assert "method method" not in body["detail"].lower()
    assert body["detail"].startswith("DELETE is not allowed")
    assert "GET, POST" in body["detail"]


def test_a_413_says_the_limit_in_bytes_and_readably() -> None:
    _, from_aiohttp = from_http_exception(web.HTTPRequestEntityTooLarge(max_size=1048576, actual_size=2000000), None)
    _, ours = from_service_error(BodyTooLarge(3 * 1024**3, what="the file", setting="MAX_UPLOAD_BYTES"), None)

    assert "1048576 bytes (1 MiB, MAX_BODY_BYTES)" in from_aiohttp["detail"]
    assert "3221225472 bytes (3 GiB, MAX_UPLOAD_BYTES)" in ours["detail"]
    assert from_aiohttp["code"] == ours["code"] == "payload_too_large"


def test_human_bytes() -> None:
    assert [human_bytes(n) for n in (0, 1023, 1024, 1536, 1024**2, 10 * 1024**3)] == [
        "0 bytes", "1023 bytes", "1 KiB", "1.5 KiB", "1 MiB", "10 GiB",
    ]  # fmt: skip
