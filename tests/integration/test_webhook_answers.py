"""`webhook.deliver` end to end, by the receiver's answer: a client error, 429 with Retry-After, no answer in
time, redirects (followed, looping, unfollowable) and a refused connection.

The type runs with a fast fixed backoff (support.webhooks) so retries take a fraction of a second.
"""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from support.receiver import Reply
from support.stack import Conn, Services, StartWorker, free_port
from support.webhooks import SECRET, stack, verifies
from workers.families.webhook import wire


@pytest.mark.parametrize("status", [400, 410])
async def test_a_client_error_fails_at_once(
    services: Services, pg: Conn, start_worker: StartWorker, status: int
) -> None:
    async with stack(services, start_worker) as (api, receiver):
        receiver.script("/hook", then=Reply(status, body=b"no such subscription"))
        job = await api.submit("webhook.deliver", {"url": receiver.url(), "event": "order.paid"})
        done = await api.wait_status(job["id"], "failed", "succeeded")

    assert done["status"] == "failed"
    assert done["attempts"] == 1
    assert done["error"]["type"] == "WebhookHTTPError"
    assert done["error"]["retryable"] is False
    assert str(status) in done["error"]["message"]
    assert "no such subscription" in done["error"]["message"]
    (hit,) = receiver.hits
    assert wire.SIGNATURE_HEADER not in hit.headers, "unsigned when no secret is configured"


async def test_429_waits_as_long_as_retry_after_asks(services: Services, pg: Conn, start_worker: StartWorker) -> None:
    async with stack(services, start_worker) as (api, receiver):
        receiver.script("/hook", Reply(429, headers={"Retry-After": "2"}))
        job = await api.submit("webhook.deliver", {"url": receiver.url(), "event": "order.paid"})
        done = await api.wait_status(job["id"], "succeeded", "failed")

    assert done["status"] == "succeeded"
    assert done["attempts"] == 2
    first, second = receiver.hits
    # The type's backoff here is 0.2 s: only Retry-After explains a wait of two seconds.
    assert second.at - first.at >= 1.5


async def test_a_receiver_that_does_not_answer_in_time_is_retried(
    services: Services, pg: Conn, start_worker: StartWorker
) -> None:
    async with stack(services, start_worker, timeout_s=0.5) as (api, receiver):
        receiver.script("/hook", Reply(200, delay_s=2))
        job = await api.submit("webhook.deliver", {"url": receiver.url(), "event": "order.paid"})
        done = await api.wait_status(job["id"], "succeeded", "failed")

    assert done["status"] == "succeeded"
    assert done["attempts"] == 2
    assert len(receiver.hits) == 2


async def test_redirects_are_followed_and_caller_headers_stay_with_their_origin(
    services: Services, pg: Conn, start_worker: StartWorker
) -> None:
    async with stack(services, start_worker, secret=SecretStr(SECRET)) as (api, receiver):
        elsewhere = receiver.url("/moved-here", host="localhost")  # another origin: a different host
        receiver.script("/old", then=Reply(308, headers={"Location": "/new"}))
        receiver.script("/new", then=Reply(307, headers={"Location": elsewhere}))
        job = await api.submit(
            "webhook.deliver", {"url": receiver.url("/old"), "event": "e", "headers": {"Authorization": "Bearer x"}}
        )
        done = await api.wait_status(job["id"], "succeeded", "failed")
        loop = await api.submit("webhook.deliver", {"url": receiver.url("/loop"), "event": "e"})
        receiver.script("/loop", then=Reply(302, headers={"Location": "/loop"}))
        looped = await api.wait_status(loop["id"], "failed", "succeeded")

    assert done["status"] == "succeeded", done["error"]
    old, new, final = (receiver.at(p)[0] for p in ("/old", "/new", "/moved-here"))
    assert old.body == new.body == final.body
    assert new.headers["Authorization"] == "Bearer x", "same origin keeps the caller's headers"
    assert "Authorization" not in final.headers, "another origin does not get them"
    assert verifies(final, wire.signing_key(SECRET, "alice"), "alice")
    assert looped["error"]["type"] == "WebhookRedirect"
    assert len(receiver.at("/loop")) == 4, "the first request and three redirects"


async def test_a_host_that_refuses_connections_is_retried(
    services: Services, pg: Conn, start_worker: StartWorker
) -> None:
    async with stack(services, start_worker) as (api, _):
        url = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
        job = await api.submit("webhook.deliver", {"url": url, "event": "e"}, max_attempts=2)
        done = await api.wait_status(job["id"], "failed", "succeeded")

    assert done["attempts"] == 2
    assert done["error"]["type"] == "WebhookConnectionError"


@pytest.mark.parametrize("headers", [{}, {"Location": "ftp://127.0.0.1/file"}])
async def test_a_redirect_that_cannot_be_followed_fails(
    services: Services, pg: Conn, start_worker: StartWorker, headers: dict[str, str]
) -> None:
    async with stack(services, start_worker) as (api, receiver):
        receiver.script("/hook", then=Reply(302, headers=headers))
        job = await api.submit("webhook.deliver", {"url": receiver.url(), "event": "e"})
        done = await api.wait_status(job["id"], "failed", "succeeded")

    assert (done["attempts"], done["error"]["type"]) == (1, "WebhookRedirect")
