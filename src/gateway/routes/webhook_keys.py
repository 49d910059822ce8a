"""GET /api/v1/webhook-signing-key: the key that signs the caller's webhook deliveries, for its receivers.

Each owner's deliveries are signed with its own key (shared.jobtypes.webhook.signing_key, derived from
WEBHOOK_SECRET and the owner), so a receiver that checks signatures with the key read here accepts only
deliveries of that owner's jobs. The key is derived on each call, never stored; the gateway and the workers
must be given the same WEBHOOK_SECRET.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import Field

from gateway.api_docs import ok
from gateway.http.query import QueryParam
from gateway.http.responses import json_response
from gateway.keys import PRINCIPAL, SETTINGS
from gateway.routing import Routes
from gateway.schemas import Doc
from gateway.security.access import Access
from shared.core.errors import BadRequest, Conflict, PermissionDenied
from shared.jobtypes import webhook as webhook_spec

routes = Routes("webhooks")
SIGNING_KEY_DESCRIPTION = (
    "Each owner's deliveries are signed with that owner's own key, derived from WEBHOOK_SECRET:"
    " a receiver checking `Conveyor-Signature` with this key and `Conveyor-Owner` against you accepts only"
    " deliveries of your jobs. A user reads only its own key (another owner's is a 403); an admin may name"
    " any owner. 409 when WEBHOOK_SECRET is not set (deliveries are then unsigned)."
)
OWNER = QueryParam(
    "owner",
    {"type": "string", "minLength": 1, "maxLength": 200},
    "Whose key (an admin may name any owner; a user only itself). Default: the caller.",
)


class SigningKey(Doc):
    """The key that signs one owner's webhook deliveries."""

    owner: str = Field(description="Whose deliveries it signs (their `owner` and `Conveyor-Owner`).")
    key_id: str = Field(description="The key's public name, as in the `k=` of `Conveyor-Signature`.")
    key: str = Field(
        description="The HMAC-SHA256 key (its UTF-8 bytes) of `Conveyor-Signature`'s `v1=`: keep it secret."
    )


@routes.get(
    "/api/v1/webhook-signing-key",
    Access.USER,
    "The key that signs your webhook deliveries",
    query=(OWNER,),
    responses={200: ok(SigningKey)},
    errors=(403, 409),
    description=SIGNING_KEY_DESCRIPTION,
)
async def get_signing_key(request: web.Request) -> web.Response:
    """GET /api/v1/webhook-signing-key: the caller's key; an admin may name another owner (`?owner=`).
    Errors: 401, 403 (a user naming another owner), 409 (no WEBHOOK_SECRET: deliveries are unsigned)."""
    principal = request[PRINCIPAL]
    owner = request.query.get("owner", principal.sub)
    if not owner:
        raise BadRequest("query parameter `owner`: at least 1 character(s)")
    if not principal.can_see(owner):
        raise PermissionDenied("a user reads only its own signing key; another owner's needs the admin role")
    secret = request.app[SETTINGS].webhook.secret
    if secret is None or not secret.get_secret_value():
        raise Conflict(
            "webhook signing is not configured: deliveries are sent unsigned; set WEBHOOK_SECRET on the "
            "gateway and the workers"
        )
    key = webhook_spec.signing_key(secret.get_secret_value(), owner)
    return json_response(
        {"owner": owner, "key_id": webhook_spec.key_id(key), "key": key}, headers={"Cache-Control": "no-store"}
    )
