"""GET /api/v1/openapi.json: the OpenAPI 3.1 document, built from the app's own router and registry."""

from __future__ import annotations

import weakref

from aiohttp import web

from gateway.api_docs import Body
from gateway.http.render import render
from gateway.openapi import build_document
from gateway.routing import Routes
from gateway.security.access import Access

routes = Routes("operations")

# Built once per app, at startup or else on the first request (the router and registry are final by then).
_DOCUMENTS: weakref.WeakKeyDictionary[web.Application, bytes] = weakref.WeakKeyDictionary()


def document_bytes(app: web.Application) -> bytes:
    cached = _DOCUMENTS.get(app)
    if cached is None:
        cached = _DOCUMENTS[app] = render(build_document(app))
    return cached


async def build_on_startup(app: web.Application) -> None:
    """An `on_startup` hook: build the document before the first request, not during it."""
    document_bytes(app)


@routes.get(
    "/api/v1/openapi.json",
    Access.PUBLIC,
    "This document",
    responses={200: Body("OpenAPI 3.1", schema={"type": "object"})},
)
async def get_openapi(request: web.Request) -> web.Response:
    """GET /api/v1/openapi.json: no auth. The contract of every route, with every job type's schemas."""
    return web.Response(body=document_bytes(request.app), content_type="application/json")
