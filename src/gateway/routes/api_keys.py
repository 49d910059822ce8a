"""API keys (admin, by gateway.security.access): POST/GET /api/v1/api-keys, DELETE /api/v1/api-keys/{id}."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway import schemas
from gateway.api_docs import NO_CONTENT, json_body, ok
from gateway.http.params import page
from gateway.http.query import PAGE
from gateway.http.responses import json_response, read_model
from gateway.keys import PG_POOL, PRINCIPAL
from gateway.routing import Routes
from gateway.security.access import Access
from shared.accounts import api_keys
from shared.core.errors import NotFound
from shared.core.ids import well_formed_id
from shared.core.json import rfc3339

routes = Routes("api-keys")
KEY = {"name": "ci", "sub": "ci-bot", "role": "user"}


def _resource(key: api_keys.ApiKey) -> dict[str, Any]:
    """Never the token nor its hash: neither exists anywhere after creation but in the caller's hands."""
    return {
        "id": key.id, "name": key.name, "sub": key.sub, "role": key.role, "prefix": key.prefix,
        "created_at": rfc3339(key.created_at), "created_by": key.created_by,
        "last_used_at": rfc3339(key.last_used_at), "revoked_at": rfc3339(key.revoked_at),
    }  # fmt: skip


@routes.post(
    "/api/v1/api-keys",
    Access.ADMIN,
    "Create an API key (its token is shown once)",
    responses={201: ok(schemas.ApiKeyCreated, "Created", "Location")},
    request=json_body(api_keys.KeyRequest, "The key's name, the principal it acts as, its role.", KEY),
)
async def create_key(request: web.Request) -> web.Response:
    """POST /api/v1/api-keys: admin. 201 with `token`, shown this once. Errors: 400, 401, 403, 415, 422."""
    body = await read_model(request, api_keys.KeyRequest)
    created = await api_keys.create(
        request.app[PG_POOL], name=body.name, sub=body.sub, role=body.role, created_by=request[PRINCIPAL].sub
    )
    return json_response(
        {**_resource(created.key), "token": created.token},
        status=201,
        headers={"Location": f"/api/v1/api-keys/{created.key.id}"},
    )


@routes.get(
    "/api/v1/api-keys",
    Access.ADMIN,
    "List API keys (never their tokens)",
    query=PAGE,
    responses={200: ok(schemas.ApiKeyList)},
)
async def list_keys(request: web.Request) -> web.Response:
    """GET /api/v1/api-keys: admin; newest first, revoked ones too (with `revoked_at`). Errors: 400, 401, 403."""
    limit, cursor = page(request.query)
    found, next_cursor = await api_keys.list_keys(request.app[PG_POOL], limit=limit, cursor=cursor)
    return json_response({"items": [_resource(k) for k in found], "next_cursor": next_cursor})


@routes.delete(
    "/api/v1/api-keys/{key_id}",
    Access.ADMIN,
    "Revoke an API key, effective immediately",
    responses={204: NO_CONTENT},
    description="An unknown or already revoked key is a 404.",
)
async def revoke_key(request: web.Request) -> web.Response:
    """DELETE /api/v1/api-keys/{id}: admin; 204, and the key is refused from the next request on, on every
    gateway (keys are checked against PostgreSQL on each use). Errors: 401, 403, 404 for an unknown key or
    one already revoked (it still shows in the list, with `revoked_at`)."""
    key_id = request.match_info["key_id"]
    if not well_formed_id(key_id) or await api_keys.revoke(request.app[PG_POOL], key_id) is None:
        raise NotFound(f"no live API key {key_id!r} (unknown, or revoked already)")
    return web.Response(status=204)
