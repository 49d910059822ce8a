"""One declaration per route (gateway.routing): the router, the access check, the docs' table and the OpenAPI
document all come from it, and a route cannot be declared twice."""

from __future__ import annotations

import pytest
from aiohttp import web

from gateway.api_docs import NO_CONTENT
from gateway.routes import ROUTES
from gateway.routing import ROUTE_TABLE, Routes, RouteTable, install, markdown_table, template_key
from gateway.security.access import Access


async def _handler(request: web.Request) -> web.Response:
    return web.Response(status=204)


def _routes() -> Routes:
    routes = Routes("things")
    routes.get("/api/v1/things/{thing_id}", Access.USER, "Get a thing", responses={204: NO_CONTENT})(_handler)
    routes.delete("/api/v1/things/{thing_id}", Access.ADMIN, "Drop a thing", responses={204: NO_CONTENT})(_handler)
    return routes


def test_a_route_declared_twice_is_refused_whatever_its_variables_are_called() -> None:
    routes = _routes()

    with pytest.raises(ValueError, match="declared twice"):
        routes.get("/api/v1/things/{other}", Access.PUBLIC, "Again", responses={204: NO_CONTENT})(_handler)
    with pytest.raises(ValueError, match="declared twice"):
        RouteTable([*routes, *routes])


def test_install_puts_each_declaration_on_the_router_and_in_the_table() -> None:
    app = web.Application()
    install(app, _routes())

    on_router = sorted((r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None)
    assert on_router == [
        ("DELETE", "/api/v1/things/{thing_id}"),
        ("GET", "/api/v1/things/{thing_id}"),
        ("HEAD", "/api/v1/things/{thing_id}"),
    ]
    table = app[ROUTE_TABLE]
    found = table.find("HEAD", "/api/v1/things/{any}")
    assert found is not None
    assert (found.access, found.summary, found.tag) == (Access.USER, "Get a thing", "things")
    assert table.find("PUT", "/api/v1/things/{thing_id}") is None


def test_the_docs_table_is_derived_from_the_declarations() -> None:
    assert markdown_table(_routes()).splitlines()[2:] == [
        "| `GET /api/v1/things/{id}` | 401 | own | all |",
        "| `DELETE /api/v1/things/{id}` | 401 | 403 | yes |",
    ]


def test_the_gateway_declares_each_route_once_and_names_queues_by_name() -> None:
    keys = [r.key for r in ROUTES]

    assert len(keys) == len(set(keys)) >= 38
    assert template_key("head", "/api/v1/jobs/{job_id}") == ("GET", "/api/v1/jobs/{}")
    assert "| `POST /api/v1/queues/{name}/pause` | 401 | 403 | yes |" in markdown_table(ROUTES)
