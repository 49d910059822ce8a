"""GET /api/v1/job-types: the registry as the API describes it."""

from __future__ import annotations

from aiohttp import web

from gateway import schemas
from gateway.api_docs import ok
from gateway.http.responses import json_response
from gateway.keys import REGISTRY
from gateway.routing import Routes
from gateway.security.access import Access

routes = Routes("jobs")


@routes.get(
    "/api/v1/job-types",
    Access.AUTHENTICATED,
    "List job types with their policy and schemas",
    responses={200: ok(schemas.JobTypeList)},
)
async def list_job_types(request: web.Request) -> web.Response:
    """GET /api/v1/job-types: every registered type with its policy and schemas. Any authenticated role."""
    return json_response({"items": [spec.describe() for spec in request.app[REGISTRY]]})
