"""One error table: every ServiceError maps to its status by walking the MRO; 500s say nothing inside."""

from __future__ import annotations

from gateway.errors import from_service_error, internal, status_for
from shared import errors


class _NotFoundSubclass(errors.NotFound):
    pass


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
        "type": "/problems/invalid-input", "title": "Invalid input", "status": 422, "detail": "bad",
        "code": "invalid_input", "errors": [{"loc": ["payload", "to", 0], "msg": "not an email"}], "request_id": "rid",
    }  # fmt: skip


def test_internal_errors_reveal_nothing() -> None:
    status, body = internal("rid")

    assert status == 500
    assert set(body) == {"type", "title", "status", "detail", "code", "request_id"}
