"""One declaration per route (gateway.routing): the router, the access check, the docs' table and the OpenAPI
document all come from it, and a route cannot be declared twice."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.api_docs import NO_CONTENT
from gateway.http import params
from gateway.http.middlewares import error_middleware
from gateway.http.query import QueryParam
from gateway.keys import REGISTRY
from gateway.openapi import build_document
from gateway.routes import ROUTES
from gateway.routing import ROUTE_TABLE, Routes, RouteTable, install, markdown_table, template_key
from gateway.security.access import Access
from shared.jobtypes import builtin_registry

COLOUR = QueryParam("colour", {"type": "string", "enum": ["red", "blue"]}, "Only things of this colour.")


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


def _listings() -> Routes:
    routes = Routes("things")
    routes.get("/api/v1/things", Access.PUBLIC, "List things", query=(COLOUR,), responses={204: NO_CONTENT})(_handler)
    routes.get("/api/v1/stuff", Access.PUBLIC, "List stuff", responses={204: NO_CONTENT})(_handler)
    return routes


async def _status_and_problem(client: TestClient[web.Request, web.Application], query: str) -> tuple[int, Any]:
    async with client.get(f"/api/v1{query}") as resp:
        return resp.status, await resp.json() if resp.status == 400 else None


async def test_a_route_takes_the_query_parameters_it_declares_and_no_other() -> None:
    app = web.Application(middlewares=[error_middleware, params.query_middleware])
    install(app, _listings())

    async with TestClient(TestServer(app)) as client:
        declared = await _status_and_problem(client, "/things?colour=red")
        refused_value = await _status_and_problem(client, "/things?colour=green")
        unknown = await _status_and_problem(client, "/things?size=3")
        takes_none = await _status_and_problem(client, "/stuff?colour=red")

    assert declared == (204, None)
    assert refused_value[0] == unknown[0] == takes_none[0] == 400
    assert refused_value[1]["errors"] == [{"loc": ["query", "colour"], "msg": "one of red, blue"}]
    assert "this route takes colour" in unknown[1]["detail"]
    assert "this route takes none" in takes_none[1]["detail"]


def test_the_accepted_names_and_the_documented_parameters_come_from_the_declarations() -> None:
    app = web.Application()
    app[REGISTRY] = builtin_registry()
    install(app, _listings())

    paths = build_document(app, version="0")["paths"]

    assert params.accepted_names(_listings()) == {("GET", "/api/v1/things"): frozenset({"colour"})}
    assert paths["/api/v1/things"]["get"]["parameters"] == [
        {
            "name": "colour",
            "in": "query",
            "required": False,
            "schema": dict(COLOUR.schema),
            "description": COLOUR.description,
        }
    ]
    assert "parameters" not in paths["/api/v1/stuff"]["get"]
    assert params.accepted_names(ROUTES)[("GET", "/api/v1/jobs")] == {
        "status",
        "type",
        "queue",
        "batch_id",
        "limit",
        "cursor",
    }
