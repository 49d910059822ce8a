"""Rate limits over a real gateway and Redis: per principal, per IP on failed authentication, queue cap."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shared.core.settings import SecurityConfig
from support.stack import Api, Conn, Services, gateway_settings, running_gateway

pytestmark = pytest.mark.usefixtures("pg", "jobs_redis")

BAD = {"Authorization": "Bearer not-a-token"}


@contextlib.asynccontextmanager
async def gateway(services: Services, **security: Any) -> AsyncIterator[Api]:
    async with running_gateway(gateway_settings(services, security=SecurityConfig(**security))) as api:
        yield api


async def _get(api: Api, path: str = "/api/v1/job-types", **kw: Any) -> tuple[int, Any, Any]:
    return await api.request("GET", path, **kw)


async def _metric(api: Api, reason: str) -> float:
    _, text, _ = await api.request("GET", "/metrics")
    prefix = f'conveyor_gateway_rate_limited_total{{reason="{reason}"}} '
    return next((float(line.removeprefix(prefix)) for line in text.splitlines() if line.startswith(prefix)), 0.0)


async def test_a_principal_over_its_limit_gets_429_with_retry_after(services: Services) -> None:
    async with gateway(services, rate_limit_per_minute=3) as api:
        remaining = []
        for _ in range(3):
            status, _, resp = await _get(api)
            assert status == 200
            assert resp.headers["RateLimit-Limit"] == "3"
            assert 1 <= int(resp.headers["RateLimit-Reset"]) <= 60
            remaining.append(int(resp.headers["RateLimit-Remaining"]))

        status, body, resp = await _get(api)

        assert remaining == [2, 1, 0]
        assert status == 429
        assert resp.content_type == "application/problem+json"
        assert body["type"] == "/problems/rate-limited"
        assert 1 <= int(resp.headers["Retry-After"]) <= 60
        assert (await _get(api, as_="bob"))[0] == 200  # the limit is per principal
        assert await _metric(api, "principal") == 1


async def test_a_limit_too_large_to_meter_still_works(services: Services) -> None:
    # 10^9 a minute: each request's share of the window is below a double's precision at Redis's clock.
    async with gateway(services, rate_limit_per_minute=1_000_000_000) as api:
        statuses = [(await _get(api))[0] for _ in range(5)]
        _, text, _ = await api.request("GET", "/metrics")

    assert statuses == [200] * 5
    local = 'conveyor_gateway_rate_limit_fallback_checks_total{limiter="principal"} 0.0'
    assert local in text.splitlines(), "Redis answered; the limiter did not fall back"


async def test_public_routes_are_not_limited_per_principal(services: Services) -> None:
    async with gateway(services, rate_limit_per_minute=1) as api:
        statuses = {(await api.request("GET", path))[0] for path in ["/health", "/api/v1/openapi.json"] * 3}

        assert statuses == {200}


async def test_the_limit_is_shared_by_every_gateway_replica(services: Services) -> None:
    async with gateway(services, rate_limit_per_minute=4) as one, gateway(services, rate_limit_per_minute=4) as two:
        statuses = [(await _get(api))[0] for api in (one, two, one, two, one, two)]

    assert statuses == [200, 200, 200, 200, 429, 429]


async def _without_credentials(api: Api, path: str = "/api/v1/job-types") -> tuple[int, Any, Any]:
    async with api.session.get(api.base + path) as resp:
        return resp.status, await resp.json(content_type=None), resp


async def test_failures_from_an_address_never_lock_out_valid_credentials(services: Services) -> None:
    async with (
        gateway(services, auth_failures_per_minute=5) as api,
        gateway(services, auth_failures_per_minute=5) as other,
    ):
        status, key, _ = await api.request(
            "POST", "/api/v1/api-keys", as_="root", role="admin", json={"name": "ci", "sub": "svc-ci", "role": "user"}
        )
        assert status == 201, key
        failures = [(await _get(api, headers=BAD))[0] for _ in range(40)]
        jwt_status, _, _ = await _get(api)  # the same address, a valid token
        key_status, _, _ = await _get(api, headers={"Authorization": f"Bearer {key['token']}"})
        status, body, resp = await _get(api, headers=BAD)
        anonymous, problem, _ = await _without_credentials(api)
        # Another replica sees the shared count at the address's next failure.
        elsewhere, _, _ = await _get(other, headers=BAD)
        elsewhere_valid, _, _ = await _get(other)

        assert failures == [401] * 5 + [429] * 35
        assert (jwt_status, key_status) == (200, 200)
        assert status == 429
        assert resp.content_type == "application/problem+json"
        assert body["type"] == "/problems/rate-limited"
        assert 1 <= int(resp.headers["Retry-After"]) <= 60
        assert (anonymous, problem["status"]) == (401, 401)
        assert (elsewhere, elsewhere_valid) == (429, 200)
        assert await _metric(api, "auth_failures") == 36


async def test_a_request_without_credentials_is_not_counted_as_a_failure(services: Services) -> None:
    async with gateway(services, auth_failures_per_minute=3) as api:
        anonymous = [(await _without_credentials(api))[0] for _ in range(10)]
        failures = [(await _get(api, headers=BAD))[0] for _ in range(4)]
        still_anonymous, body, resp = await _without_credentials(api)

    assert anonymous == [401] * 10
    assert failures == [401, 401, 401, 429]  # the ten requests without a token counted for nothing
    assert still_anonymous == 401
    assert resp.content_type == "application/problem+json"
    assert body["status"] == 401


async def test_forwarded_for_names_the_client_only_when_trusted(services: Services) -> None:
    def hop(ip: str, spoofed: str = "192.0.2.1") -> dict[str, str]:
        # What a client sent (left) and what the proxy in front appended: the address it saw (right).
        return {**BAD, "X-Forwarded-For": f"{spoofed}, {ip}"}

    async with gateway(services, auth_failures_per_minute=2, trust_forwarded_for=True) as api:
        trusted = [(await _get(api, headers=hop("203.0.113.7", f"192.0.2.{i}")))[0] for i in range(3)]
        neighbour, _, _ = await _get(api, headers=hop("203.0.113.8"))
    async with gateway(services, auth_failures_per_minute=2) as api:
        # Not trusted: every request is the peer's, whatever the header claims.
        untrusted = [(await _get(api, headers=hop(f"198.51.100.{i}")))[0] for i in range(3)]

    assert trusted == [401, 401, 429]  # a new left-most entry each time is no new client
    assert neighbour == 401
    assert untrusted == [401, 401, 429]


async def test_forwarded_for_counts_the_configured_hops_from_the_right(services: Services) -> None:
    def chain(client: str) -> dict[str, str]:
        return {**BAD, "X-Forwarded-For": f"192.0.2.9, {client}, 10.0.0.2"}  # two proxies of yours

    async with gateway(services, auth_failures_per_minute=2, trust_forwarded_for=True, forwarded_for_hops=2) as api:
        same = [(await _get(api, headers=chain("203.0.113.20")))[0] for _ in range(3)]
        other, _, _ = await _get(api, headers=chain("203.0.113.21"))

    assert same == [401, 401, 429]
    assert other == 401  # the inner proxy's 10.0.0.2 is shared by everyone and keys nobody


async def test_an_ipv6_client_is_one_client_across_its_64(services: Services) -> None:
    def v6(address: str) -> dict[str, str]:
        return {**BAD, "X-Forwarded-For": address}

    async with gateway(services, auth_failures_per_minute=2, trust_forwarded_for=True) as api:
        rotating = [(await _get(api, headers=v6(f"2001:db8:1:2::{i:x}")))[0] for i in range(1, 4)]
        next_block, _, _ = await _get(api, headers=v6("2001:db8:1:3::1"))

    assert rotating == [401, 401, 429]
    assert next_block == 401


async def _echo(api: Api, as_: str = "alice", **extra: Any) -> tuple[int, Any, Any]:
    body = {"type": "system.echo", "payload": {}, "delay_s": 3600, **extra}
    return await api.request("POST", "/api/v1/jobs", as_=as_, json=body)


def _batch(n: int) -> dict[str, Any]:
    return {"jobs": [{"type": "system.echo", "payload": {}, "delay_s": 3600}] * n}


async def test_waiting_jobs_are_capped_per_owner(services: Services, pg: Conn) -> None:
    async with gateway(services, max_queued_per_owner=3) as api:
        accepted = [(await _echo(api, idempotency_key=f"k{i}"))[0] for i in range(3)]
        status, body, resp = await _echo(api)
        replay, _, _ = await _echo(api, idempotency_key="k0")
        batch, _, _ = await api.request("POST", "/api/v1/batches", json=_batch(1))
        bob_batch, _, _ = await api.request("POST", "/api/v1/batches", as_="bob", json=_batch(3))
        bob_more, _, _ = await _echo(api, as_="bob")

        assert accepted == [202, 202, 202]
        assert status == 429
        assert body["type"] == "/problems/rate-limited"
        assert "3" in body["detail"]
        assert int(resp.headers["Retry-After"]) >= 1
        assert replay == 200  # an idempotent replay records nothing, so it is never refused
        assert batch == 429
        assert bob_batch == 202
        assert bob_more == 429
        assert await pg.fetchval("SELECT count(*) FROM jobs WHERE owner = 'alice'") == 3
        assert await _metric(api, "queue_cap") == 3

        first = await pg.fetchval("SELECT id FROM jobs WHERE owner = 'alice' ORDER BY created_at LIMIT 1")
        cancelled, _, _ = await api.request("POST", f"/api/v1/jobs/{first}/cancel")
        assert cancelled == 200
        assert (await _echo(api))[0] == 202  # a finished job frees its place


async def test_a_batch_counts_whole(services: Services) -> None:
    async with gateway(services, max_queued_per_owner=5) as api:
        too_big, body, _ = await api.request("POST", "/api/v1/batches", json=_batch(6))
        fits, _, _ = await api.request("POST", "/api/v1/batches", json=_batch(5))

    assert too_big == 429
    assert body["status"] == 429
    assert fits == 202
