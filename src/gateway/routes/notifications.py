"""Notifications: GET /api/v1/notifications, POST /api/v1/notifications/{id}/read, and the caller's live stream."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from gateway import schemas
from gateway.api_docs import EVENT_STREAM, Body, Header, ok
from gateway.http import sse
from gateway.http.params import bad_query, page
from gateway.http.query import PAGE, QueryParam
from gateway.http.responses import json_response
from gateway.keys import EVENT_HUB, PG_POOL, PRINCIPAL, SETTINGS
from gateway.routing import Routes
from gateway.security.access import Access
from shared.core.errors import NotFound
from shared.core.ids import well_formed_id
from shared.ledger import notifications

logger = logging.getLogger(__name__)
routes = Routes("notifications")

BOOLEANS = {"true": True, "false": False}
# How long a new stream waits for this gateway's Redis subscription (only ever pending just after start-up).
SUBSCRIBE_WAIT_S = 2.0
# A reconnecting client (`Last-Event-ID`) is sent at most this many missed notifications; it lists the rest.
CATCH_UP_MAX = 200
UNREAD = QueryParam("unread", {"type": "string", "enum": ["true", "false"]}, "Only unread ones when `true`.")


def _query(params: Mapping[str, str]) -> tuple[bool, int, str | None]:
    """`unread` and the page; unknown, repeated and oversized parameters were refused by `gateway.http.params`."""
    unread = BOOLEANS.get(params.get("unread", "false").lower())
    if unread is None:
        raise bad_query("unread", "`true` or `false`")
    return unread, *page(params)


@routes.get(
    "/api/v1/notifications",
    Access.USER,
    "List the caller's notifications, newest first",
    query=(UNREAD, *PAGE),
    responses={200: ok(schemas.NotificationList)},
)
async def list_notifications(request: web.Request) -> web.Response:
    """GET /api/v1/notifications?unread=&limit=&cursor=: newest first; a user lists its own, an admin everyone's
    (each item's `user` says whose). Errors: 400, 401."""
    unread, limit, cursor = _query(request.query)
    principal = request[PRINCIPAL]
    page, next_cursor = await notifications.list_notifications(
        request.app[PG_POOL],
        owner=principal.visible_owner,
        unread=unread,
        limit=limit,
        cursor=cursor,
    )
    return json_response({"items": [n.resource() for n in page], "next_cursor": next_cursor})


@routes.post(
    "/api/v1/notifications/{notification_id}/read",
    Access.USER,
    "Mark a notification read",
    responses={200: ok(schemas.Notification)},
)
async def mark_read(request: web.Request) -> web.Response:
    """POST /api/v1/notifications/{id}/read: the owner (or an admin). 200 with the notification; idempotent,
    a second call keeps the first `read_at`. Errors: 401, 404 (also for another user's notification)."""
    notification_id = request.match_info["notification_id"]
    principal = request[PRINCIPAL]
    record = (
        await notifications.mark_read(request.app[PG_POOL], notification_id, owner=principal.visible_owner)
        if well_formed_id(notification_id)
        else None
    )
    if record is None:
        raise NotFound(f"no notification {notification_id!r}")
    return json_response(record.resource())


@routes.get(
    "/api/v1/notifications/stream",
    Access.OWN,
    "The caller's notifications as a live event stream",
    responses={200: Body("`event: notification` for each new one", media_type=EVENT_STREAM)},
    headers=(
        Header(
            "Last-Event-ID",
            {"type": "string"},
            "On a reconnect: the notifications created after this one are sent first.",
        ),
    ),
    description="429 past SSE_MAX_PER_PRINCIPAL open streams.",
)
async def stream_notifications(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/notifications/stream: the caller's own notifications (whatever the role) as they are created,
    one `event: notification` each with `id:` set to the notification's id; a comment every SSE_HEARTBEAT_S.
    With `Last-Event-ID` (a reconnect), the caller's notifications created after that one are sent first.
    Errors (before the stream starts): 401, 429 past SSE_MAX_PER_PRINCIPAL open streams."""
    app, user = request.app, request[PRINCIPAL].sub
    hub = app[EVENT_HUB]
    last_id = request.headers.get("Last-Event-ID", "").strip()
    async with sse.stream_slot(request):
        with hub.listen_notifications(user) as inbox:
            if not await hub.subscribed(SUBSCRIBE_WAIT_S):
                logger.warning("notifications.stream_unsubscribed")  # it works once Redis is back
            stream = await sse.open_stream(request)
            try:
                sent = await _catch_up(app, stream, user, last_id)
                await _follow(app, stream, inbox, sent)
            except sse.DISCONNECTED:
                logger.info("notifications.client_gone")
    return stream


async def _catch_up(app: web.Application, stream: web.StreamResponse, user: str, last_id: str) -> set[str]:
    """Send what a reconnecting client missed; returns the ids sent (they may also be in the inbox)."""
    if not well_formed_id(last_id):
        return set()
    missed = await notifications.newer_than(app[PG_POOL], owner=user, after_id=last_id, limit=CATCH_UP_MAX)
    for record in missed:
        await sse.send(stream, "notification", record.resource(), event_id=record.id)
    return {record.id for record in missed}


async def _follow(
    app: web.Application, stream: web.StreamResponse, inbox: asyncio.Queue[dict[str, Any]], sent: set[str]
) -> None:
    heartbeat_s = app[SETTINGS].gateway.sse_heartbeat_s
    while True:
        try:
            event = await asyncio.wait_for(inbox.get(), heartbeat_s)
        except TimeoutError:
            await sse.keepalive(stream)
            continue
        if event["kind"] == "shutdown":
            return  # the gateway is stopping; the client reconnects elsewhere (with Last-Event-ID)
        if event["kind"] != "notification":
            continue
        resource: dict[str, Any] = event["notification"]
        if resource["id"] in sent:
            sent.discard(resource["id"])  # already sent by the catch-up
            continue
        await sse.send(stream, "notification", resource, event_id=resource["id"])
