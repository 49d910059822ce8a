"""Rate limits hold under a flood of concurrent requests, and while Redis db 0 is unreachable they count in the
gateway process (same limits, per process) until Redis answers again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator

import pytest

from gateway.security.ratelimit import PROBE_EVERY_S
from shared.core.settings import GatewaySettings, RedisConfig, SecurityConfig
from support.helpers import eventually
from support.stack import Api, Services, gateway_settings, running_gateway
from support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.usefixtures("pg", "jobs_redis")

BAD = {"Authorization": "Bearer not-a-token"}
JOB_TYPES = "/api/v1/job-types"


async def _metrics(api: Api, name: str) -> dict[str, float]:
    """The samples of one metric by the value of its `limiter` label."""
    _, text, _ = await api.request("GET", "/metrics")
    prefix = f'{name}{{limiter="'
    return {
        line.removeprefix(prefix).partition('"')[0]: float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith(prefix)
    }


class CountingProxy(TcpProxy):
    """The proxy in front of the test Redis, counting the connections made through it (refused ones too)."""

    connections = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        await super()._handle(reader, writer)


@pytest.fixture
async def proxy(services: Services) -> AsyncIterator[CountingProxy]:
    host, _, port = services.redis_base.removeprefix("redis://").rsplit("@", 1)[-1].partition(":")
    p = CountingProxy(host or "127.0.0.1", int(port or 6379))
    await p.start()
    yield p
    await p.close()


@contextlib.asynccontextmanager
async def gateway(settings: GatewaySettings) -> AsyncIterator[Api]:
    async with running_gateway(settings) as api:
        yield api


async def test_a_flood_from_one_principal_gets_no_more_than_its_bucket(services: Services) -> None:
    limit = 300
    settings = gateway_settings(services, security=SecurityConfig(rate_limit_per_minute=limit))
    # The production Redis timeouts: only the client's own timeouts may end a limiter call.
    redis = RedisConfig(cache_url=services.cache_url, jobs_url=services.jobs_url)
    async with gateway(settings.model_copy(update={"redis": redis})) as api:

        async def status(as_: str) -> int:
            return (await api.request("GET", JOB_TYPES, as_=as_))[0]

        flood: list[int] = []
        others: list[int] = []
        started = time.monotonic()
        for _ in range(5):  # 500 requests, 100 at a time, and two of another principal's among each wave
            wave = await asyncio.gather(*(status("alice") for _ in range(100)), status("bob"), status("bob"))
            flood += wave[:100]
            others += wave[100:]
        elapsed = time.monotonic() - started

    # The bucket holds `limit` requests and refills at limit/60 s: nothing more may pass in `elapsed`.
    allowed = limit + math.ceil(elapsed * limit / 60) + 1
    accepted = flood.count(200)
    assert set(flood) == {200, 429}
    assert limit <= accepted <= allowed, f"{accepted} accepted in {elapsed:.1f} s"
    assert others == [200] * 10


async def test_while_the_cache_is_down_limits_hold_in_process_until_it_answers_again(
    services: Services, proxy: CountingProxy, caplog: pytest.LogCaptureFixture
) -> None:
    security = SecurityConfig(rate_limit_per_minute=3, auth_failures_per_minute=2, trust_forwarded_for=True)
    settings = gateway_settings(services, security=security)
    through_proxy = RedisConfig(
        cache_url=proxy.url(services.cache_db), jobs_url=services.jobs_url, connect_timeout_s=0.5
    )
    direct = gateway(settings)
    async with gateway(settings.model_copy(update={"redis": through_proxy})) as api, direct as neighbour:

        async def get(as_: str = "alice", ip: str = "198.51.100.1", **headers: str) -> int:
            return (await api.request("GET", JOB_TYPES, as_=as_, headers={"X-Forwarded-For": ip, **headers}))[0]

        before = await get()  # counted in Redis: the fallback goes on from there
        proxy.cut()
        connections, cut_at = proxy.connections, time.monotonic()
        with caplog.at_level(logging.INFO, logger="gateway.security.ratelimit"):
            during = [await get() for _ in range(4)]
            failures = [await get(**BAD) for _ in range(4)]
            valid_from_that_address = await get(as_="bob")
            others = [await get(as_=f"user-{i}") for i in range(60)]
            tried_redis, elapsed = proxy.connections - connections, time.monotonic() - cut_at
            # Each limiter makes one call as it fails, then one probe per PROBE_EVERY_S, each call trying at
            # most two connections (a stale pooled one is replaced once); the event hub retries once a
            # second. Nowhere near one connection per request.
            limiters = 2 * 2 * (1 + math.ceil(elapsed / PROBE_EVERY_S))
            probes_allowed = limiters + 2 * (1 + math.ceil(elapsed))
            fallback = await _metrics(api, "conveyor_gateway_rate_limit_fallback")
            checked = await _metrics(api, "conveyor_gateway_rate_limit_fallback_checks_total")

            proxy.restore()
            probes = iter(range(1, 255))

            async def back_on_redis() -> dict[str, float] | None:
                await get(as_="carol")
                await get(ip=f"192.0.2.{next(probes)}", **BAD)  # a fresh address: its failure is counted again
                gauges = await _metrics(api, "conveyor_gateway_rate_limit_fallback")
                return gauges if set(gauges.values()) == {0.0} else None

            await eventually(back_on_redis, within=15, interval=0.2)

        assert before == 200
        assert during == [200, 200, 429, 429]
        assert failures == [401, 401, 429, 429]
        assert valid_from_that_address == 200
        assert others == [200] * 60
        assert tried_redis <= probes_allowed, f"{tried_redis} connections to Redis for 69 requests"
        assert fallback == {"principal": 1.0, "auth_failures": 1.0}
        assert checked == {"principal": 65.0, "auth_failures": 3.0}
        events = [(r.getMessage(), getattr(r, "limiter", None)) for r in caplog.records]
        for limiter in ("principal", "auth_failures"):
            assert events.count(("ratelimit.fallback_local", limiter)) == 1  # once, not once per request
            assert events.count(("ratelimit.redis_back", limiter)) == 1
        # Back on Redis, the limit is shared with the other replica again.
        shared = [(await neighbour.request("GET", JOB_TYPES, as_="dave"))[0] for _ in range(3)]
        assert shared == [200] * 3
        assert await get(as_="dave") == 429
