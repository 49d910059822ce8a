"""Every route is declared with its access (gateway.routing) and the gateway enforces it: 401 without a token, 403
for a user on admin routes, someone else's resource is a 404 for a user and visible to an admin; the route
table of docs/api.md is the one the declarations generate."""

from __future__ import annotations

import pathlib
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from redis.asyncio import Redis

from gateway.app import create_app
from gateway.routes import ROUTES
from gateway.routing import RouteTable, markdown_table
from gateway.security.access import Access
from shared.core.settings import GatewaySettings, SecurityConfig
from support.helpers import make_token
from support.stack import Api, Conn, Services, gateway_settings, running_gateway

API_DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "api.md"
TABLE = RouteTable(ROUTES)
ADMIN = {"Authorization": f"Bearer {make_token('root', role='admin')}"}


def settings(services: Services) -> GatewaySettings:
    # Walking every route without a token is a burst of failed authentications from one address.
    return gateway_settings(services, security=SecurityConfig(auth_failures_per_minute=100_000))


@pytest.fixture
async def gateway(services: Services, pg: Conn, jobs_redis: Redis) -> AsyncIterator[Api]:
    async with running_gateway(settings(services)) as client:
        yield client


def routes(app: web.Application) -> list[tuple[str, str]]:
    found = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None}
    return sorted(found)


def concrete(template: str) -> str:
    return re.sub(r"\{[^}]*\}", "missing", template)


async def call(api: Api, method: str, path: str, headers: dict[str, str] | None = None) -> int:
    async with api.session.request(method, api.base + path, headers=headers or {}) as resp:
        return resp.status


def required_access(method: str, template: str) -> Access | None:
    route = TABLE.find(method, template)
    return None if route is None else route.access


def test_every_route_of_the_app_is_declared(services: Services) -> None:
    missing = [route for route in routes(create_app(settings(services))) if required_access(*route) is None]

    assert not missing, f"declare these routes with gateway.routing.Routes: {missing}"


def test_the_declarations_name_each_route_once() -> None:
    keys = [r.key for r in ROUTES]

    assert len(keys) == len(set(keys))


def test_declarations_match_whatever_the_path_variables_are_called_and_head_is_a_get() -> None:
    assert required_access("GET", "/api/v1/jobs/{job_id}") is Access.USER
    assert required_access("HEAD", "/api/v1/jobs/{anything}") is Access.USER
    assert required_access("DELETE", "/api/v1/api-keys/{key_id}") is Access.ADMIN
    assert required_access("PUT", "/api/v1/jobs/{job_id}") is None
    assert required_access("GET", "/api/v1/jobs/{job_id}/secret") is None


async def test_no_token_is_401_and_a_user_on_an_admin_route_is_403(gateway: Api) -> None:
    user = {"Authorization": f"Bearer {make_token('alice')}"}
    checked = 0
    for method, template in routes(gateway.app):
        access = required_access(method, template)
        path = concrete(template)
        if access is Access.PUBLIC:
            assert await call(gateway, method, path) not in (401, 403), (method, template)
            continue
        assert await call(gateway, method, path) == 401, (method, template)
        assert await call(gateway, method, path, {"Authorization": "Bearer not-a-token"}) == 401, (method, template)
        if access is Access.ADMIN:
            assert await call(gateway, method, path, user) == 403, (method, template)
        checked += 1
    assert checked >= 20


async def test_unknown_api_paths_need_a_token_before_they_are_404(gateway: Api) -> None:
    assert await call(gateway, "GET", "/api/v1/nothing-here") == 401
    assert await call(gateway, "GET", "/api/v1/nothing-here", ADMIN) == 404
    assert await call(gateway, "GET", "/nothing-here") == 404


async def test_a_route_without_a_declaration_is_admin_only(
    services: Services, pg: Conn, jobs_redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    async def unlisted(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = create_app(settings(services))
    app.router.add_get("/api/v1/unlisted", unlisted)
    app.router.add_get("/unlisted", unlisted)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    user = {"Authorization": f"Bearer {make_token('alice')}"}
    try:
        async with aiohttp.ClientSession() as session:
            for path in ("/api/v1/unlisted", "/unlisted"):
                statuses = []
                for headers in ({}, user, ADMIN):
                    async with session.get(base + path, headers=headers) as resp:
                        statuses.append(resp.status)
                assert statuses == [401, 403, 200], path
    finally:
        await runner.cleanup()
    assert any(r.getMessage() == "auth.route_without_rule" for r in caplog.records)


def _documented_table() -> str:
    text = API_DOC.read_text(encoding="utf-8")
    start, end = "<!-- access-table -->", "<!-- /access-table -->"
    assert start in text, f"docs/api.md lacks the {start} … {end} markers around the route table"
    assert end in text, f"docs/api.md lacks the {end} marker"
    return text.split(start, 1)[1].split(end, 1)[0].strip()


def test_the_route_table_of_the_docs_is_the_generated_one() -> None:
    assert _documented_table() == markdown_table(ROUTES).strip(), (
        "paste gateway.routing.markdown_table(gateway.routes.ROUTES) into docs/api.md"
    )


# --- someone else's resources ---------------------------------------------------------------------------


async def bobs_things(api: Api) -> dict[str, str]:
    job = await api.submit("system.echo", {"data": 1}, as_="bob")
    status, batch, _ = await api.request(
        "POST", "/api/v1/batches", as_="bob", json={"jobs": [{"type": "system.echo", "payload": {"data": 2}}]}
    )
    assert status == 202, batch
    status, schedule, _ = await api.request(
        "POST",
        "/api/v1/schedules",
        as_="bob",
        json={"name": "yearly", "cron": "0 0 1 1 *", "job": {"type": "system.echo", "payload": {"data": 3}}},
    )
    assert status == 201, schedule
    return {"job": job["id"], "batch": batch["id"], "schedule": schedule["id"]}


def owner_scoped_calls(ids: dict[str, str]) -> list[tuple[str, str, dict[str, Any] | None]]:
    job, batch, schedule = ids["job"], ids["batch"], ids["schedule"]
    return [
        ("GET", f"/api/v1/jobs/{job}", None),
        ("POST", f"/api/v1/jobs/{job}/cancel", None),
        ("POST", f"/api/v1/jobs/{job}/retry", None),
        ("GET", f"/api/v1/jobs/{job}/events", None),
        ("GET", f"/api/v1/batches/{batch}", None),
        ("GET", f"/api/v1/schedules/{schedule}", None),
        ("PATCH", f"/api/v1/schedules/{schedule}", {"enabled": False}),
        ("DELETE", f"/api/v1/schedules/{schedule}", None),
    ]


async def test_a_user_cannot_see_or_touch_someone_elses_resources(gateway: Api, pg: Conn) -> None:
    ids = await bobs_things(gateway)

    for method, path, body in owner_scoped_calls(ids):
        status, problem, _ = await gateway.request(method, path, as_="alice", json=body)
        assert status == 404, (method, path, problem)

    job = await gateway.job(ids["job"], as_="bob")
    assert job["status"] in ("queued", "scheduled")
    assert await pg.fetchval("SELECT enabled FROM schedules WHERE id = $1", ids["schedule"]) is True
    for kind, listing in (("jobs", "/api/v1/jobs"), ("schedules", "/api/v1/schedules")):
        status, body, _ = await gateway.request("GET", listing, as_="alice")
        assert (status, body["items"]) == (200, []), kind


async def test_an_admin_can_see_and_act_on_everyones_resources(gateway: Api) -> None:
    ids = await bobs_things(gateway)
    expected = {"cancel": 200, "retry": 202, "DELETE": 204, "events": 200}

    for method, path, body in owner_scoped_calls(ids):
        if path.endswith("/events"):
            async with gateway.session.get(gateway.base + path, headers=ADMIN) as resp:
                assert resp.status == 200, path
                assert (await resp.content.readline()).startswith(b"event: job")
            continue
        status, seen, _ = await gateway.request(method, path, as_="root", role="admin", json=body)
        want = next((code for word, code in expected.items() if path.endswith(word) or method == word), 200)
        assert status == want, (method, path, seen)

    status, body, _ = await gateway.request("GET", "/api/v1/jobs", as_="root", role="admin")
    assert ids["job"] in {j["id"] for j in body["items"]}
