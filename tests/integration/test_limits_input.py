"""Request limits and input hardening over real HTTP: sizes, nesting, list bounds, headers, query parameters."""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.http import params
from gateway.routes import ROUTES
from shared.core import json
from support.stack import Api, Services, gateway_settings, running_gateway

pytestmark = pytest.mark.usefixtures("pg", "jobs_redis")

LIMIT = 4096
SECRET = "sk_live_51HbQ7sECRETvalue9f8e7d"  # a recognisable value that must never be echoed back


@pytest.fixture
async def small(services: Services) -> AsyncIterator[Api]:
    """A gateway whose body limit is small enough to cross cheaply."""
    async with running_gateway(gateway_settings(services, max_body_bytes=LIMIT)) as api:
        yield api


def _padded(body: dict[str, Any], size: int) -> bytes:
    """`body` as JSON of exactly `size` bytes (spaces after the object are valid JSON whitespace)."""
    raw = json.dumps(body)
    assert len(raw) <= size
    return raw + b" " * (size - len(raw))


JSON_ROUTES = [
    ("/api/v1/jobs", {"type": "system.echo", "payload": {}}),
    ("/api/v1/batches", {"jobs": [{"type": "system.echo", "payload": {}}]}),
    ("/api/v1/schedules", {"name": "n", "cron": "0 2 * * *", "job": {"type": "system.echo"}}),
    ("/api/v1/queues/default/clean", {}),
]


@pytest.mark.parametrize(("path", "body"), JSON_ROUTES)
async def test_one_byte_over_the_body_limit_is_413(small: Api, path: str, body: dict[str, Any]) -> None:
    headers = {"Content-Type": "application/json"}

    at_limit, _, _ = await small.request("POST", path, role="admin", data=_padded(body, LIMIT), headers=headers)
    status, problem, resp = await small.request(
        "POST", path, role="admin", data=_padded(body, LIMIT + 1), headers=headers
    )

    assert at_limit in (200, 201, 202)
    assert status == 413
    assert resp.content_type == "application/problem+json"
    assert problem["type"] == "/problems/payload-too-large"


def _nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value


async def test_a_deeply_nested_body_is_422(api: Api) -> None:
    fits = {"type": "system.echo", "payload": {"data": _nested(30)}}  # 32 objects deep, counting the body
    too_deep = {"type": "system.echo", "payload": {"data": _nested(31)}}

    ok, _, _ = await api.request("POST", "/api/v1/jobs", json=fits)
    status, problem, _ = await api.request("POST", "/api/v1/jobs", json=too_deep)
    # Past orjson's own limit too, the answer is the same.
    raw = b'{"payload": ' + b"[" * 2000 + b"]" * 2000 + b"}"
    beyond, beyond_problem, _ = await api.request(
        "POST", "/api/v1/jobs", data=raw, headers={"Content-Type": "application/json"}
    )

    assert ok == 202
    assert status == 422
    assert problem["errors"] == [{"loc": ["body"], "msg": "at most 32 levels of nesting", "type": "too_deep"}]
    assert beyond == 422
    assert beyond_problem["errors"][0]["type"] == "too_deep"


async def test_a_payload_over_1_mib_is_422_even_when_the_body_may_be_bigger(services: Services) -> None:
    fits = {"type": "system.echo", "payload": {"data": "x" * (1024 * 1024 - 100)}}
    big = {"type": "system.echo", "payload": {"data": "x" * (1024 * 1024)}}

    async def post(api: Api, body: dict[str, Any]) -> tuple[int, Any, Any]:
        # A stream, not bytes: aiohttp warns that a large bytes body would block the loop.
        data = io.BytesIO(json.dumps(body))
        return await api.request("POST", "/api/v1/jobs", data=data, headers={"Content-Type": "application/json"})

    async with running_gateway(gateway_settings(services, max_body_bytes=4 * 1024 * 1024)) as api:
        ok, _, _ = await post(api, fits)
        status, problem, _ = await post(api, big)

    assert ok == 202
    assert status == 422
    assert [e["loc"] for e in problem["errors"]] == [["payload"]]
    assert "1024 KiB" in problem["errors"][0]["msg"]


async def test_a_batch_takes_1_to_1000_jobs(api: Api) -> None:
    member = {"type": "system.echo", "payload": {}, "delay_s": 3600}

    empty, _, _ = await api.request("POST", "/api/v1/batches", json={"jobs": []})
    over, problem, _ = await api.request("POST", "/api/v1/batches", json={"jobs": [member] * 1001})
    full, created, _ = await api.request("POST", "/api/v1/batches", json={"jobs": [member] * 1000})

    assert empty == 422
    assert over == 422
    assert problem["errors"][0]["loc"] == ["jobs"]
    assert full == 202
    assert created["total"] == 1000


def _list_routes(api: Api) -> list[str]:
    """Every list route the gateway serves (the routes that take `limit`)."""
    served = {(r.method, r.resource.canonical) for r in api.app.router.routes() if r.resource is not None}
    accepted = params.accepted_names(ROUTES)
    return [path for (method, path), names in accepted.items() if "limit" in names and (method, path) in served]


@pytest.mark.parametrize("limit", ["0", "201", "-1", "abc", "", "1.5"])
async def test_list_limit_out_of_bounds_is_400_on_every_list_route(api: Api, limit: str) -> None:
    routes = _list_routes(api)

    answers = {path: await api.request("GET", f"{path}?limit={limit}", role="admin") for path in routes}

    assert {"/api/v1/jobs", "/api/v1/schedules"} <= set(routes)
    for path, (status, problem, _) in answers.items():
        assert status == 400, path
        assert problem["errors"][0]["loc"] == ["query", "limit"], path


async def test_list_limit_in_bounds_is_served(api: Api) -> None:
    for path in _list_routes(api):
        for limit in ("1", "200"):
            status, body, _ = await api.request("GET", f"{path}?limit={limit}", role="admin")
            assert status == 200, (path, body)


def _every_api_route(api: Api) -> list[tuple[str, str]]:
    found = []
    for route in api.app.router.routes():
        if route.resource is None or route.method in ("HEAD", "*"):
            continue
        template = route.resource.canonical
        if template.startswith("/api/v1/"):
            found.append((route.method, re.sub(r"\{[^}]+\}", "default", template)))
    return found


async def test_unknown_query_parameters_are_400_on_every_api_route(api: Api) -> None:
    routes = _every_api_route(api)

    async def ask(method: str, path: str) -> tuple[str, int, Any]:
        status, body, _ = await api.request(method, f"{path}?bogus=1", role="admin", json={})
        return f"{method} {path}", status, body

    answers = await asyncio.gather(*(ask(m, p) for m, p in routes))

    assert len(routes) > 15
    for name, status, body in answers:
        assert status == 400, name
        assert body["errors"] == [{"loc": ["query", "bogus"], "msg": "unknown parameter"}], name


async def test_a_repeated_or_oversized_query_parameter_is_400(api: Api) -> None:
    repeated, _, _ = await api.request("GET", "/api/v1/jobs?limit=1&limit=2")
    oversized, _, _ = await api.request("GET", "/api/v1/jobs?cursor=" + "x" * 600)
    unknown_route, _, _ = await api.request("GET", "/api/v1/nothing-here?bogus=1")

    assert repeated == 400
    assert oversized == 400
    assert unknown_route == 404


async def test_an_oversized_header_is_refused_without_a_500(api: Api) -> None:
    status, _, _ = await api.request("GET", "/api/v1/jobs", headers={"X-Padding": "x" * 16 * 1024})
    health, _, _ = await api.request("GET", "/health")

    assert status in (400, 431)
    assert health == 200  # the server is still serving


async def test_malformed_json_is_400_and_another_content_type_415(api: Api) -> None:
    bad, problem, resp = await api.request(
        "POST", "/api/v1/jobs", data=b'{"type": ', headers={"Content-Type": "application/json"}
    )
    text, _, _ = await api.request("POST", "/api/v1/jobs", data=b"type=x", headers={"Content-Type": "text/plain"})
    form, _, _ = await api.request("POST", "/api/v1/jobs", data={"type": "system.echo"})

    assert bad == 400
    assert resp.content_type == "application/problem+json"
    assert problem["type"] == "/problems/bad-request"
    assert text == 415
    assert form == 415


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/jobs", {"type": "email.send", "payload": {"to": [SECRET], "subject": "s", "text": "t"}}),
        ("/api/v1/jobs", {"type": "email.send", "payload": {"to": [f"a@{SECRET}"], "subject": "s", "text": "t"}}),
        ("/api/v1/jobs", {"type": "system.echo", "priority": SECRET}),
        ("/api/v1/jobs", {"type": "system.echo", "max_attempts": SECRET}),
        ("/api/v1/jobs", {"type": "system.echo", "run_at": SECRET}),
        ("/api/v1/jobs", {"type": SECRET}),
        ("/api/v1/jobs", {"type": "webhook.deliver", "payload": {"url": f"ftp://{SECRET}/x"}}),
        ("/api/v1/batches", {"jobs": [{"type": "system.echo", "timeout_s": SECRET}]}),
        ("/api/v1/schedules", {"name": "n", "cron": SECRET, "job": {"type": "system.echo"}}),
        ("/api/v1/schedules", {"name": "n", "cron": "0 2 * * *", "timezone": SECRET, "job": {"type": "system.echo"}}),
    ],
)
async def test_schema_errors_locate_the_field_but_never_echo_its_value(
    api: Api, path: str, body: dict[str, Any]
) -> None:
    status, problem, resp = await api.request("POST", path, json=body)

    assert status == 422
    assert problem["errors"]
    for error in problem["errors"]:
        assert isinstance(error["loc"], list)
        assert error["msg"]
    assert SECRET not in json.dumps(problem).decode()
    assert resp.content_type == "application/problem+json"
