"""`webhook.deliver` end to end: gateway -> worker -> a local receiver over real sockets. Signing and each
owner's key, private addresses, metrics, and the circuit breaker; test_webhook_answers.py has the receiver's
answers (client errors, 429, timeouts, redirects, refused connections).

The type runs with a fast fixed backoff (support.webhooks) so retries take a fraction of a second; everything
else (payload, handler, settings) is the built-in one.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from shared.core import json
from support.helpers import eventually
from support.receiver import Receiver, Reply, running_receiver
from support.stack import Api, Conn, Services, StartWorker, gateway_settings, running_gateway
from support.webhooks import HANDLERS, REGISTRY, SECRET, hooks, stack, verifies
from workers.families.webhook import wire
from workers.families.webhook.circuit import Breaker, CircuitState, Permit, circuit
from workers.processes import WorkerProcess


def webhook_metric(process: WorkerProcess, outcome: str) -> float:
    value = process.metrics.registry.get_sample_value("conveyor_worker_webhook_deliveries_total", {"outcome": outcome})
    return value or 0.0


def open_circuits(process: WorkerProcess) -> float | None:
    return process.metrics.registry.get_sample_value("conveyor_worker_webhook_circuits", {"state": "open"})


def key_of(api_key: dict[str, Any]) -> str:
    key = api_key["key"]
    assert isinstance(key, str)
    return key


async def test_delivery_is_signed_and_keeps_its_id_across_a_retry(
    services: Services, pg: Conn, start_worker: StartWorker
) -> None:
    async with stack(services, start_worker, secret=SecretStr(SECRET)) as (api, receiver):
        receiver.script("/hook", Reply(503, body=b"busy"))
        job = await api.submit(
            "webhook.deliver",
            {"url": receiver.url(), "event": "order.paid", "data": {"order": 42}, "headers": {"X-Tenant": "acme"}},
        )
        done = await api.wait_status(job["id"], "succeeded", "failed")

    assert done["status"] == "succeeded", done["error"]
    assert done["result"]["status_code"] == 200
    assert done["result"]["attempt"] == done["attempts"] == 2
    first, second = receiver.at("/hook")
    assert first.body == second.body, "a retry sends the same delivery"
    delivery = wire.delivery_id(job["id"])
    for hit in (first, second):
        assert hit.headers[wire.DELIVERY_HEADER] == delivery
        assert hit.headers[wire.EVENT_HEADER] == "order.paid"
        assert hit.headers["Content-Type"] == "application/json"
        assert hit.headers["User-Agent"].startswith("Conveyor-Webhooks/")
        assert hit.headers["X-Tenant"] == "acme"
        assert hit.headers[wire.OWNER_HEADER] == "alice"
        assert verifies(hit, wire.signing_key(SECRET, "alice"), "alice")
        assert not verifies(hit, wire.signing_key("another-secret", "alice"), "alice")
    body = json.loads(first.body)
    assert body["id"] == delivery
    assert (body["event"], body["data"]) == ("order.paid", {"order": 42})
    assert body["created_at"] == done["created_at"]
    assert body["owner"] == "alice", "the signed body names whose delivery it is"


async def signing_key(api: Api, as_: str, *, role: str = "user", owner: str | None = None) -> dict[str, Any]:
    query = "" if owner is None else f"?owner={owner}"
    status, body, resp = await api.request("GET", "/api/v1/webhook-signing-key" + query, as_=as_, role=role)
    assert status == 200, body
    assert resp.headers["Cache-Control"] == "no-store", "a secret is never cached"
    assert isinstance(body, dict)
    return body


async def test_a_delivery_verifies_only_with_its_own_owners_key_read_from_the_gateway(
    services: Services, pg: Conn, start_worker: StartWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)  # the gateway derives the keys from the same secret
    async with stack(services, start_worker, secret=SecretStr(SECRET)) as (api, receiver):
        alices = await api.submit("webhook.deliver", {"url": receiver.url("/alice"), "event": "invoice.paid"})
        # bob knows alice's receiver and posts an event of his choosing to it
        bobs = await api.submit("webhook.deliver", {"url": receiver.url("/alice"), "event": "invoice.paid"}, as_="bob")
        for job, owner in ((alices, "alice"), (bobs, "bob")):
            assert (await api.wait_status(job["id"], "succeeded", "failed", as_=owner))["status"] == "succeeded"
        alice_key, bob_key = await signing_key(api, "alice"), await signing_key(api, "bob")
        for_alice = await signing_key(api, "root", role="admin", owner="alice")
        refused, problem, _ = await api.request("GET", "/api/v1/webhook-signing-key?owner=alice", as_="bob")

    by_delivery = {h.headers[wire.DELIVERY_HEADER]: h for h in receiver.at("/alice")}
    alice_hit, bob_hit = (by_delivery[wire.delivery_id(j["id"])] for j in (alices, bobs))
    assert (alice_key["owner"], bob_key["owner"]) == ("alice", "bob")
    assert key_of(alice_key) != key_of(bob_key)
    assert verifies(alice_hit, key_of(alice_key), "alice")
    assert not verifies(bob_hit, key_of(alice_key), "alice"), "alice's receiver refuses bob's delivery"
    assert verifies(bob_hit, key_of(bob_key), "bob")
    assert f"k={alice_key['key_id']}," in alice_hit.headers[wire.SIGNATURE_HEADER], "the id of the key used"
    assert for_alice == alice_key, "an admin may read any owner's key"
    assert refused == 403, problem
    assert "admin" in problem["detail"]
    assert key_of(alice_key) not in str(problem)


async def test_the_signing_key_route_says_when_signing_is_not_configured(
    services: Services, pg: Conn, jobs_redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WEBHOOK_SECRET", raising=False)
    async with running_gateway(gateway_settings(services)) as api:
        status, problem, resp = await api.request("GET", "/api/v1/webhook-signing-key")

    assert status == 409
    assert resp.content_type == "application/problem+json"
    assert "webhook signing is not configured" in problem["detail"]
    assert "WEBHOOK_SECRET" in problem["detail"]


async def test_a_webhook_host_a_user_chose_never_shows_in_the_metrics(
    services: Services, pg: Conn, start_worker: StartWorker
) -> None:
    worker = await start_worker("default", handlers=HANDLERS, registry=REGISTRY, webhook=hooks(breaker_failures=1))
    async with running_gateway(gateway_settings(services), registry=REGISTRY) as api:
        url = "http://hooks.tenant-only-name.invalid/hook"  # a name that does not resolve: the attempt fails
        job = await api.submit("webhook.deliver", {"url": url, "event": "e"}, max_attempts=1)
        done = await api.wait_status(job["id"], "failed", "succeeded")
        async with api.session.get(f"http://127.0.0.1:{worker.metrics_port}/metrics") as resp:
            text = await resp.text()

    assert done["error"]["type"] == "WebhookConnectionError"
    assert "tenant-only-name" not in text
    assert "alice" not in text
    assert 'conveyor_worker_webhook_circuits{state="open"} 1.0' in text, "its circuit opened, and is counted"


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]"])
async def test_private_addresses_are_refused(
    services: Services, pg: Conn, start_worker: StartWorker, host: str
) -> None:
    async with stack(services, start_worker, allow_private=False) as (api, receiver):
        job = await api.submit("webhook.deliver", {"url": receiver.url(host=host), "event": "order.paid"})
        done = await api.wait_status(job["id"], "failed", "succeeded")

    assert done["status"] == "failed"
    assert done["attempts"] == 1
    assert done["error"]["type"] == "WebhookAddressRefused"
    assert done["error"]["retryable"] is False
    message = done["error"]["message"]
    assert "loopback" in message
    assert ("localhost" if host == "localhost" else "127.0.0.1") in message, "it names the refused address"
    assert "WEBHOOK_ALLOW_PRIVATE=true allows private destinations" in message
    assert receiver.hits == []


async def _open_circuit(api: Api, receiver: Receiver, failures: int) -> None:
    """`failures` jobs of one attempt each, all answered 503: the host's circuit opens."""
    receiver.script("/hook", *[Reply(503)] * failures)
    jobs = [
        await api.submit("webhook.deliver", {"url": receiver.url(), "event": "e"}, max_attempts=1)
        for _ in range(failures)
    ]
    for job in jobs:
        assert (await api.wait_status(job["id"], "failed", "succeeded"))["status"] == "failed"


async def test_an_open_circuit_holds_jobs_until_a_probe_succeeds(
    services: Services, pg: Conn, start_worker: StartWorker
) -> None:
    worker = await start_worker(
        "default", handlers=HANDLERS, registry=REGISTRY, webhook=hooks(breaker_failures=2, breaker_open_s=3)
    )
    async with running_receiver() as receiver, running_gateway(gateway_settings(services), registry=REGISTRY) as api:
        await _open_circuit(api, receiver, failures=2)

        # One attempt only: were the wait counted as an attempt, this job would fail.
        job = await api.submit("webhook.deliver", {"url": receiver.url(), "event": "e"}, max_attempts=1)
        await eventually(lambda: _positive(webhook_metric(worker, "circuit_open")))
        # Counted as the held job found it (the two failures may have reported their states in either order).
        assert open_circuits(worker) == 1
        held = await api.job(job["id"])
        assert (held["status"], held["attempts"], held["started_at"]) == ("queued", 0, None), "it waits, unstarted"
        assert len(receiver.hits) == 2, "the host is left alone while the circuit is open"

        done = await api.wait_status(job["id"], "succeeded", "failed")

    assert done["status"] == "succeeded"
    assert done["attempts"] == 1
    assert len(receiver.hits) == 3, "one probe, which succeeded"
    assert open_circuits(worker) == 0, "closed again"


async def test_a_job_held_by_an_open_circuit_still_expires(
    services: Services, pg: Conn, start_worker: StartWorker
) -> None:
    worker = await start_worker(
        "default", handlers=HANDLERS, registry=REGISTRY, webhook=hooks(breaker_failures=2, breaker_open_s=60)
    )
    async with running_receiver() as receiver, running_gateway(gateway_settings(services), registry=REGISTRY) as api:
        await _open_circuit(api, receiver, failures=2)
        # Held for the circuit's 60 s, it comes back at its expiry (3 s) and fails then.
        job = await api.submit("webhook.deliver", {"url": receiver.url(), "event": "e"}, expires_in_s=3)
        await eventually(lambda: _positive(webhook_metric(worker, "circuit_open")))

        done = await api.wait_status(job["id"], "failed", "succeeded", within=30)

    assert (done["status"], done["error"]["type"], done["attempts"]) == ("failed", "JobExpired", 0)
    assert len(receiver.hits) == 2, "an expired delivery is never sent"


async def test_one_owners_open_circuit_does_not_hold_another_owners_deliveries(
    services: Services, pg: Conn, start_worker: StartWorker
) -> None:
    worker = await start_worker(
        "default", handlers=HANDLERS, registry=REGISTRY, webhook=hooks(breaker_failures=2, breaker_open_s=30)
    )
    async with running_receiver() as receiver, running_gateway(gateway_settings(services), registry=REGISTRY) as api:
        await _open_circuit(api, receiver, failures=2)  # alice's deliveries to the receiver's host fail
        held = await api.submit("webhook.deliver", {"url": receiver.url(), "event": "e"})
        await eventually(lambda: _positive(webhook_metric(worker, "circuit_open")))

        bobs = await api.submit("webhook.deliver", {"url": receiver.url(), "event": "e"}, as_="bob")
        done = await api.wait_status(bobs["id"], "succeeded", "failed", as_="bob")
        still = await api.job(held["id"])

    assert (done["status"], done["attempts"]) == ("succeeded", 1)
    assert json.loads(receiver.at("/hook")[-1].body)["owner"] == "bob"
    assert still["status"] == "queued", "alice's circuit is still open"
    assert open_circuits(worker) == 1, "alice's circuit; bob's is closed"


async def test_the_circuit_is_shared_by_worker_processes(
    services: Services, pg: Conn, start_worker: StartWorker
) -> None:
    config = hooks(breaker_failures=2, breaker_open_s=3)
    first = await start_worker("default", handlers=HANDLERS, registry=REGISTRY, webhook=config)
    async with running_receiver() as receiver, running_gateway(gateway_settings(services), registry=REGISTRY) as api:
        await _open_circuit(api, receiver, failures=2)
        first.stop()
        second = await start_worker("default", handlers=HANDLERS, registry=REGISTRY, webhook=config)

        job = await api.submit("webhook.deliver", {"url": receiver.url(), "event": "e"})
        await eventually(lambda: _positive(webhook_metric(second, "circuit_open")))
        assert len(receiver.hits) == 2, "the second process holds the job on the first one's failures"
        done = await api.wait_status(job["id"], "succeeded", "failed")

    assert done["status"] == "succeeded"
    assert done["attempts"] == 1
    assert len(receiver.hits) == 3


async def _positive(value: float) -> float | None:
    return value if value > 0 else None


async def test_deliveries_go_on_while_the_cache_is_unusable(
    services: Services, pg: Conn, start_worker: StartWorker
) -> None:
    # Database 999 does not exist: every cache call fails, as when the cache is down. The breaker fails open.
    broken_cache = dataclasses.replace(services, cache_db=999)
    await start_worker("default", via=broken_cache, handlers=HANDLERS, registry=REGISTRY, webhook=hooks())
    async with running_receiver() as receiver, running_gateway(gateway_settings(services), registry=REGISTRY) as api:
        job = await api.submit("webhook.deliver", {"url": receiver.url(), "event": "e"})
        done = await api.wait_status(job["id"], "succeeded", "failed")

    assert done["status"] == "succeeded"
    assert len(receiver.hits) == 1


EXAMPLE = circuit("alice", "example.com")


async def test_breaker_probe_that_fails_opens_the_circuit_again(services: Services, jobs_redis: Redis) -> None:
    cache = Redis.from_url(services.cache_url)
    breaker = Breaker(failures=2, open_s=0.3, probe_s=5)
    try:
        assert (await breaker.acquire(cache, circuit("alice", "Example.com"))).allowed
        assert await breaker.failed(cache, EXAMPLE) is CircuitState.CLOSED, "one failure is not enough"
        assert await breaker.failed(cache, EXAMPLE) is CircuitState.OPEN
        refused = await breaker.acquire(cache, EXAMPLE)
        assert (refused.allowed, refused.state) == (False, CircuitState.OPEN)
        assert 0 < refused.wait_s <= 0.3
        assert (await breaker.acquire(cache, circuit("alice", "other.example"))).allowed, "one circuit per host"
        assert (await breaker.acquire(cache, circuit("bob", "example.com"))).allowed, "and per owner"

        probe = await eventually(lambda: _allowed(breaker, cache))
        assert probe.state is CircuitState.HALF_OPEN
        second = await breaker.acquire(cache, EXAMPLE)
        assert (second.allowed, second.state) == (False, CircuitState.HALF_OPEN), "one probe at a time"
        assert await breaker.failed(cache, EXAMPLE) is CircuitState.OPEN, "a failed probe opens it again"
        assert not (await breaker.acquire(cache, EXAMPLE)).allowed

        await eventually(lambda: _allowed(breaker, cache))
        assert await breaker.succeeded(cache, EXAMPLE) is CircuitState.CLOSED
        assert (await breaker.acquire(cache, EXAMPLE)).state is CircuitState.CLOSED
    finally:
        await cache.aclose()


async def _allowed(breaker: Breaker, cache: Redis) -> Permit | None:
    permit = await breaker.acquire(cache, EXAMPLE)
    return permit if permit.allowed else None
