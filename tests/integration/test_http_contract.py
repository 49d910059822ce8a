"""The HTTP contract's edges: authentication, ownership, problem+json errors, request ids, listing."""

from __future__ import annotations

import asyncio
import io
import time
from collections import defaultdict
from typing import Any

import jwt
import pytest

from gateway.http.errors import TITLES
from shared.core import json
from support.helpers import TEST_JWT_SECRET, make_token
from support.stack import Api, Conn


async def _raw(api: Api, method: str, path: str, **kw: object) -> tuple[int, str, dict[str, str], bytes]:
    async with api.session.request(method, api.base + path, **kw) as resp:  # type: ignore[arg-type]
        return resp.status, resp.content_type, dict(resp.headers), await resp.read()


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Basic YWxpY2U6c2VjcmV0"},
        {"Authorization": "Bearer not-a-jwt"},
        {"Authorization": f"Bearer {make_token('alice', secret='another-secret-0123456789-0123456789')}"},
        {"Authorization": f"Bearer {make_token('alice', ttl_s=-3600)}"},
    ],
    ids=["no-token", "basic", "garbage", "wrong-secret", "expired"],
)
async def test_requests_without_valid_credentials_are_401(api: Api, headers: dict[str, str]) -> None:
    status, content_type, _, body = await _raw(api, "GET", "/api/v1/jobs", headers=headers)

    assert status == 401
    assert content_type == "application/problem+json"
    assert b"Traceback" not in body


async def test_unsigned_token_is_refused(api: Api) -> None:
    now = int(time.time())
    token = jwt.encode({"sub": "admin", "role": "admin", "exp": now + 60}, key="", algorithm="none")

    status, *_ = await _raw(api, "GET", "/api/v1/jobs", headers={"Authorization": f"Bearer {token}"})

    assert status == 401


async def test_token_without_expiry_is_refused(api: Api) -> None:
    token = jwt.encode({"sub": "alice"}, TEST_JWT_SECRET, algorithm="HS256")

    status, *_ = await _raw(api, "GET", "/api/v1/jobs", headers={"Authorization": f"Bearer {token}"})

    assert status == 401


async def test_another_users_job_is_404_and_admin_sees_it(api: Api) -> None:
    job = await api.submit("system.echo", {}, as_="alice")

    status, body, _ = await api.request("GET", f"/api/v1/jobs/{job['id']}", as_="mallory")
    assert status == 404
    assert body["status"] == 404
    assert body["type"] == "/problems/not-found"

    status, body, _ = await api.request("GET", f"/api/v1/jobs/{job['id']}", as_="root", role="admin")
    assert status == 200
    assert body["owner"] == "alice"


async def test_users_list_only_their_own_jobs(api: Api) -> None:
    mine = await api.submit("system.echo", {}, as_="alice")
    await api.submit("system.echo", {}, as_="bob")

    _, alice_list, _ = await api.request("GET", "/api/v1/jobs", as_="alice")
    _, admin_list, _ = await api.request("GET", "/api/v1/jobs", as_="root", role="admin")

    assert [j["id"] for j in alice_list["items"]] == [mine["id"]]
    assert len(admin_list["items"]) == 2


async def test_listing_is_newest_first_and_paginates_without_gaps(api: Api) -> None:
    ids = [(await api.submit("system.echo", {"data": i}))["id"] for i in range(5)]

    seen: list[str] = []
    cursor: str | None = None
    for _ in range(5):
        query = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
        status, page, _ = await api.request("GET", "/api/v1/jobs" + query)
        assert status == 200
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert seen == list(reversed(ids))


async def test_listing_filters_by_status_and_type(api: Api, pg: Conn) -> None:
    first = await api.submit("system.echo", {})
    await api.submit("system.echo", {})
    await pg.execute("UPDATE jobs SET status = 'failed' WHERE id = $1", first["id"])

    _, failed, _ = await api.request("GET", "/api/v1/jobs?status=failed&type=system.echo")
    _, none, _ = await api.request("GET", "/api/v1/jobs?type=email.send")

    assert [j["id"] for j in failed["items"]] == [first["id"]]
    assert none == {"items": [], "next_cursor": None}


async def test_every_cursor_of_the_published_form_is_a_position(api: Api) -> None:
    ids = [(await api.submit("system.echo", {"data": i}))["id"] for i in range(2)]

    _, below_all, _ = await api.request("GET", "/api/v1/jobs?cursor=0.a")  # before 1970: nothing is older
    _, above_all, _ = await api.request("GET", "/api/v1/jobs", params={"cursor": "99999999999999999.-"})

    assert below_all == {"items": [], "next_cursor": None}
    assert [j["id"] for j in above_all["items"]] == list(reversed(ids))


@pytest.mark.parametrize(
    "query", ["?limit=0", "?limit=201", "?limit=abc", "?status=done", "?cursor=%%%", "?cursor=", "?colour=blue"]
)
async def test_bad_query_parameters_are_400(api: Api, query: str) -> None:
    status, body, resp = await api.request("GET", "/api/v1/jobs" + query)

    assert status == 400
    assert resp.content_type == "application/problem+json"
    assert body["errors"][0]["loc"][0] == "query"


async def test_malformed_json_is_400(api: Api) -> None:
    status, body, _ = await api.request(
        "POST", "/api/v1/jobs", data=b'{"type": "system.echo",', headers={"Content-Type": "application/json"}
    )

    assert status == 400
    assert body["type"] == "/problems/bad-request"


async def test_wrong_content_type_is_415(api: Api) -> None:
    status, _, _ = await api.request("POST", "/api/v1/jobs", data=b"type=system.echo")

    assert status == 415


async def test_body_over_the_limit_is_413(api: Api) -> None:
    huge = json.dumps({"type": "system.echo", "payload": {"data": "x" * (1024 * 1024 + 10)}})

    status, _body, resp = await api.request(
        "POST", "/api/v1/jobs", data=io.BytesIO(huge), headers={"Content-Type": "application/json"}
    )

    assert status == 413
    assert resp.content_type == "application/problem+json"
    assert "at most 1048576 bytes (1 MiB, MAX_BODY_BYTES)" in _body["detail"]


async def test_unknown_fields_are_422(api: Api) -> None:
    status, body, _ = await api.request("POST", "/api/v1/jobs", json={"type": "system.echo", "payload": {}, "prio": 1})

    assert status == 422
    assert body["errors"][0]["loc"] == ["prio"]


async def test_unknown_route_and_wrong_method_are_problem_json(api: Api) -> None:
    status, content_type, _, _ = await _raw(api, "GET", "/nowhere")
    assert (status, content_type) == (404, "application/problem+json")

    status, content_type, headers, body = await _raw(api, "DELETE", "/api/v1/jobs", headers=api.auth())
    assert (status, content_type) == (405, "application/problem+json")
    assert "POST" in headers["Allow"]
    detail = json.loads(body)["detail"]
    assert "method method" not in detail.lower()
    assert detail.startswith("DELETE is not allowed"), detail
    assert "allows GET, HEAD, POST" in detail


async def test_one_status_has_one_title_whichever_part_of_the_gateway_refused(api: Api) -> None:
    deep: object = 1
    for _ in range(40):
        deep = [deep]
    json_headers = {"Content-Type": "application/json"}
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/nowhere", {}),  # aiohttp's router
        ("GET", "/api/v1/jobs/job_nothing", {}),  # NotFound
        ("DELETE", "/api/v1/jobs", {}),  # the router's 405
        ("GET", "/api/v1/jobs?limit=0", {}),  # a query parameter
        ("POST", "/api/v1/jobs", {"data": b"{", "headers": json_headers}),  # malformed JSON
        ("POST", "/api/v1/jobs", {"json": {"type": "system.echo", "prio": 1}}),  # pydantic validation
        ("POST", "/api/v1/jobs", {"json": {"type": "no.such.type"}}),  # InvalidInput
        ("POST", "/api/v1/jobs", {"json": {"type": "system.echo", "payload": {"data": deep}}}),  # too deep
        ("POST", "/api/v1/jobs", {"data": b"x", "headers": {"Content-Type": "text/plain"}}),  # 415
        ("POST", "/api/v1/jobs", {"data": io.BytesIO(b" " * (1024 * 1024 + 1)), "headers": json_headers}),  # 413
        ("POST", "/api/v1/uploads", {}),  # an empty upload
    ]
    titles: dict[int, set[str]] = defaultdict(set)
    for method, path, options in cases:
        status, problem, resp = await api.request(method, path, **options)
        assert resp.content_type == "application/problem+json", (method, path, status)
        titles[status].add(problem["title"])

    assert set(titles) == {400, 404, 405, 413, 415, 422}
    assert titles == {status: {TITLES[status]} for status in titles}


async def test_request_id_is_echoed_or_minted(api: Api) -> None:
    _, _, echoed, _ = await _raw(api, "GET", "/health", headers={"X-Request-ID": "req-123"})
    _, _, minted, _ = await _raw(api, "GET", "/health")

    assert echoed["X-Request-ID"] == "req-123"
    assert len(minted["X-Request-ID"]) >= 16


async def test_error_bodies_carry_the_request_id(api: Api) -> None:
    _, _, _, body = await _raw(api, "GET", "/api/v1/jobs", headers={"X-Request-ID": "trace-me"})

    assert b'"request_id":"trace-me"' in body


async def test_idempotency_key_replays_the_original_job(api: Api) -> None:
    first = await api.submit("system.echo", {"data": 1}, idempotency_key="order-42")

    status, again, resp = await api.request(
        "POST",
        "/api/v1/jobs",
        json={"type": "system.echo", "payload": {"data": 1}},
        headers={"Idempotency-Key": "order-42"},
    )

    assert status == 200
    assert again["id"] == first["id"]
    assert resp.headers["Idempotent-Replayed"] == "true"


async def test_idempotency_key_is_per_principal(api: Api) -> None:
    alice = await api.submit("system.echo", {}, idempotency_key="k", as_="alice")
    bob = await api.submit("system.echo", {}, idempotency_key="k", as_="bob")

    assert alice["id"] != bob["id"]


async def test_idempotency_key_reused_for_another_request_is_409(api: Api) -> None:
    await api.submit("system.echo", {"data": 1}, idempotency_key="k2")

    status, body, _ = await api.request(
        "POST", "/api/v1/jobs", json={"type": "system.echo", "payload": {"data": 2}, "idempotency_key": "k2"}
    )

    assert status == 409
    assert body["code"] == "conflict"


async def test_concurrent_duplicates_create_exactly_one_job(api: Api, pg: Conn) -> None:
    request = {"type": "system.echo", "payload": {"data": "once"}, "idempotency_key": "burst"}

    results = await asyncio.gather(*(api.request("POST", "/api/v1/jobs", json=request) for _ in range(20)))

    assert sorted(status for status, _, _ in results) == [200] * 19 + [202]
    assert len({body["id"] for _, body, _ in results}) == 1
    assert await pg.fetchval("SELECT count(*) FROM jobs") == 1


async def test_job_types_describe_the_registry(api: Api) -> None:
    status, body, _ = await api.request("GET", "/api/v1/job-types")

    assert status == 200
    by_type = {item["type"]: item for item in body["items"]}
    assert {"system.echo", "email.send"} <= set(by_type)
    email = by_type["email.send"]
    assert email["queue"] == "default"
    assert "to" in email["payload_schema"]["properties"]
    assert email["backoff"]["kind"] == "exponential"
    assert set(email["limits"]) == {"concurrency_per_owner", "per_second"}


@pytest.mark.parametrize(
    ("method", "path", "body", "expected"),
    [
        ("POST", "/api/v1/jobs", {"type": "system.echo", "payload": {"data": "a\u0000b"}}, 400),
        ("POST", "/api/v1/jobs", {"type": "system.echo", "payload": {}, "idempotency_key": "k\u0000"}, 400),
        ("POST", "/api/v1/jobs", {"type": "system.echo", "payload": {}, "run_at": "0001-01-01T00:00:00+01:00"}, 422),
        ("POST", "/api/v1/jobs", {"type": "system.echo", "payload": {}, "run_at": "9999-12-31T23:59:59-10:00"}, 422),
        ("POST", "/api/v1/jobs", {"type": "system.echo", "payload": {}, "run_at": "2030-01-01T00:00:00"}, 422),
        (
            "POST",
            "/api/v1/jobs",
            {"type": "system.echo", "payload": {"data": [[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]}},
            202,
        ),
        ("GET", "/api/v1/jobs?type=%00", None, 400),
        ("GET", "/api/v1/jobs?limit=%C2%B2", None, 400),
        ("GET", "/api/v1/jobs?limit=" + "9" * 5000, None, 400),
        ("GET", "/api/v1/jobs?cursor=WyIwMDAxLTAxLTAxVDAwOjAwOjAwKzAwOjAwIiwieCJd", None, 400),
        ("GET", "/api/v1/jobs/%00", None, 404),
        ("GET", "/api/v1/jobs/" + "x" * 65, None, 404),
    ],
    ids=[
        "nul-payload",
        "nul-key",
        "year-1",
        "year-9999",
        "naive-run-at",
        "deep",
        "nul-query",
        "superscript-limit",
        "huge-limit",
        "year-1-cursor",
        "nul-id",
        "long-id",
    ],
)
async def test_hostile_input_gets_a_client_error_never_a_500(
    api: Api, method: str, path: str, body: object, expected: int
) -> None:
    status, problem, resp = await api.request(method, path, json=body) if body else await api.request(method, path)

    assert status == expected, problem
    if expected >= 400:
        assert resp.content_type == "application/problem+json"


async def test_a_role_claim_that_is_not_a_string_is_401(api: Api) -> None:
    token = make_token("alice", role=["admin"])  # type: ignore[arg-type]  # a hostile token on purpose

    status, *_ = await _raw(api, "GET", "/api/v1/jobs", headers={"Authorization": f"Bearer {token}"})

    assert status == 401


async def test_a_null_idempotency_field_defers_to_the_header(api: Api) -> None:
    body: dict[str, object] = {"type": "system.echo", "payload": {}, "idempotency_key": None}

    status, job, _ = await api.request("POST", "/api/v1/jobs", json=body, headers={"Idempotency-Key": "hdr"})

    assert status == 202
    assert job["idempotency_key"] == "hdr"


def _violations(schema: dict[str, object]) -> list[str]:
    """Values that break one constraint of a query parameter's schema each (none is a NUL or too long)."""
    known = {"type", "enum", "minLength", "maxLength", "pattern", "minimum", "maximum", "default", "description"}
    assert set(schema) <= known, f"a constraint this test cannot break: {sorted(set(schema) - known)}"
    values: list[str] = []
    if "enum" in schema:
        values.append("not-one-of-them")
    if schema["type"] == "integer":
        values += ["abc", "1.5"]
        values += [str(schema["minimum"] - 1)] if "minimum" in schema else []  # type: ignore[operator]
        values += [str(schema["maximum"] + 1)] if "maximum" in schema else []  # type: ignore[operator]
    if "minLength" in schema:
        values.append("x" * (schema["minLength"] - 1))  # type: ignore[operator]
    if "maxLength" in schema:
        values.append("x" * (schema["maxLength"] + 1))  # type: ignore[operator]
    if "pattern" in schema:
        assert schema["pattern"] == r"^[0-9]{1,17}\.[A-Za-z0-9_-]{1,64}$", "add a value that breaks this pattern"
        values += ["", "1.", ".a", "1.a.b", "1.a\n", "1.a+b", "123456789012345678.a", "1." + "a" * 65, "\uff11.a"]
    return values


async def test_every_documented_query_constraint_is_enforced(api: Api) -> None:
    _, doc, _ = await api.request("GET", "/api/v1/openapi.json")
    checked = 0
    for path, item in doc["paths"].items():
        for method, op in item.items():
            for param in (p for p in op.get("parameters", []) if p["in"] == "query"):
                for value in _violations(param["schema"]):
                    status, problem, resp = await api.request(
                        method.upper(), path, params={param["name"]: value}, as_="root", role="admin"
                    )
                    where = f"{method.upper()} {path}?{param['name']}={value!r}"
                    assert status == 400, where
                    assert resp.content_type == "application/problem+json", where
                    assert problem["errors"][0]["loc"] == ["query", param["name"]], where
                    checked += 1
    assert checked >= 20
