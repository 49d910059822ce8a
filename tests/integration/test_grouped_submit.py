"""POST /api/v1/jobs in groups (shared.ledger.intake): concurrent requests share one INSERT, and each still gets
the answer it would get alone: 202 once committed, the replay, the 409, the 429 past the cap, the 503."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import Redis

from gateway.keys import HAND_OVER, INTAKE, METRICS
from shared.core.settings import SecurityConfig
from support.helpers import eventually
from support.stack import Api, Conn, Services, gateway_settings, running_gateway
from support.tcp_proxy import TcpProxy

Answer = tuple[int, Any, str]
# The statements waiting for this connection's transaction (other sessions share the server).
WAITING_ON_US = """
SELECT count(*) FROM pg_locks
WHERE locktype = 'transactionid' AND NOT granted AND pg_backend_pid() = ANY(pg_blocking_pids(pid))
"""


def _echo(data: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "system.echo", "payload": {"data": data}, **extra}


async def _post(api: Api, body: dict[str, Any], *, as_: str = "alice") -> Answer:
    status, answer, resp = await api.request("POST", "/api/v1/jobs", as_=as_, json=body)
    return status, answer, resp.content_type


@contextlib.asynccontextmanager
async def held(api: Api, pg: Conn) -> AsyncIterator[list[Answer]]:
    """Both of the intake's writes in flight, waiting on a lock this test holds, so that the requests made
    inside wait for the same next group, written when the block ends. Yields the two holding requests'
    answers, filled in on the way out."""
    intake = api.app[INTAKE]
    assert intake.groups.max_in_flight == 2
    transaction = pg.transaction()
    await transaction.start()
    holders = []
    for n, key in enumerate(("hold-1", "hold-2"), start=1):
        # An uncommitted row holding the key: the gateway's INSERT of the same key waits for this transaction.
        await pg.execute(
            "INSERT INTO jobs (id, type, queue, owner, status, payload, max_attempts, timeout_s, idempotency_key)"
            " VALUES ($1, 'system.echo', 'default', 'holder', 'queued', '{}', 1, 1, $1)",
            key,
        )
        holders.append(asyncio.create_task(_post(api, _echo(key, idempotency_key=key), as_="holder")))

        async def waiting(n: int = n) -> bool | None:
            locks = await pg.fetchval(WAITING_ON_US)
            return True if locks == n else None

        await eventually(waiting)
    groups = intake.groups.groups
    answers: list[Answer] = []
    try:
        yield answers
    finally:
        await transaction.rollback()
        answers += await asyncio.gather(*holders)
    assert intake.groups.groups == groups + 1, "the requests made while held went as one group"


async def _gathered(api: Api, *requests: tuple[dict[str, Any], str]) -> list[asyncio.Task[Answer]]:
    """Send the requests at once and wait until the intake holds every one of them, waiting for its next group."""
    intake = api.app[INTAKE]
    tasks = [asyncio.create_task(_post(api, body, as_=owner)) for body, owner in requests]

    async def arrived() -> bool | None:
        return True if intake.groups.waiting == len(requests) else None

    await eventually(arrived)
    return tasks


def _by_status(answers: list[Answer]) -> dict[int, list[Any]]:
    grouped: dict[int, list[Any]] = {}
    for status, body, _ in answers:
        grouped.setdefault(status, []).append(body)
    return grouped


async def test_a_crowd_of_posts_takes_few_inserts_and_every_202_is_committed_and_queued(
    api: Api, pg: Conn, jobs_redis: Redis
) -> None:
    intake = api.app[INTAKE]
    before = intake.groups.groups

    answers = await asyncio.gather(*(_post(api, _echo(i), as_=f"user{i % 7}") for i in range(300)))

    assert {status for status, _, _ in answers} == {202}
    ids = [job["id"] for _, job, _ in answers]
    assert len(set(ids)) == 300
    rows = await pg.fetch("SELECT id, owner, (payload->>'data')::int AS data FROM jobs WHERE id = ANY($1::text[])", ids)
    assert {(r["id"], r["owner"], r["data"]) for r in rows} == {
        (job["id"], f"user{i % 7}", i) for i, (_, job, _) in enumerate(answers)
    }
    assert [await jobs_redis.exists(f"arq:job:{job_id}") for job_id in ids] == [1] * 300
    assert intake.groups.groups - before < 300 / 3, "concurrent requests share INSERT statements"


async def test_the_same_key_twice_in_one_group_is_one_job_and_its_replay(api: Api, pg: Conn, jobs_redis: Redis) -> None:
    async with held(api, pg) as holders:
        tasks = await _gathered(
            api,
            (_echo("a", idempotency_key="k1"), "alice"),
            (_echo("a", idempotency_key="k1"), "alice"),
            (_echo("b", idempotency_key="k2"), "alice"),
            (_echo("other", idempotency_key="k2"), "alice"),
            (_echo("a", idempotency_key="k1"), "bob"),  # another owner's key is its own
        )
    k1a, k1b, k2a, k2b, bob = await asyncio.gather(*tasks)
    assert [status for status, _, _ in holders] == [202, 202]

    assert sorted([k1a[0], k1b[0]]) == [200, 202]
    assert k1a[1]["id"] == k1b[1]["id"]
    k2 = _by_status([k2a, k2b])
    assert sorted(k2) == [202, 409]
    assert {content_type for status, _, content_type in (k2a, k2b) if status == 409} == {"application/problem+json"}
    assert k2[409][0]["status"] == 409
    assert await pg.fetchval("SELECT id FROM jobs WHERE idempotency_key = 'k2'") == k2[202][0]["id"]
    assert bob[0] == 202
    assert bob[1]["id"] != k1a[1]["id"]
    assert await pg.fetchval("SELECT count(*) FROM jobs WHERE owner IN ('alice', 'bob')") == 3

    again = await _post(api, _echo("a", idempotency_key="k1"))  # a later group: the replay still holds
    assert (again[0], again[1]["id"]) == (200, k1a[1]["id"])
    assert (await _post(api, _echo("changed", idempotency_key="k2")))[0] == 409


async def test_the_queue_cap_holds_within_a_group_and_lets_replays_through(
    services: Services, pg: Conn, jobs_redis: Redis
) -> None:
    cap = 3
    settings = gateway_settings(services, security=SecurityConfig(max_queued_per_owner=cap))
    async with running_gateway(settings) as api:
        first = await _post(api, _echo("kept", idempotency_key="kept", delay_s=3600))
        assert first[0] == 202
        async with held(api, pg):
            tasks = await _gathered(
                api,
                *[(_echo(i, delay_s=3600), "alice") for i in range(2 * cap)],
                (_echo("kept", idempotency_key="kept", delay_s=3600), "alice"),  # a replay records nothing
                (_echo("b", delay_s=3600), "bob"),
            )
        answers = await asyncio.gather(*tasks)

        fresh = _by_status(answers[: 2 * cap])
        assert {status: len(bodies) for status, bodies in fresh.items()} == {202: cap - 1, 429: cap + 1}
        assert {(p["status"], p["code"]) for p in fresh[429]} == {(429, "rate_limited")}
        assert {content_type for status, _, content_type in answers if status == 429} == {"application/problem+json"}
        replay, bob = answers[2 * cap :]
        assert (replay[0], replay[1]["id"]) == (200, first[1]["id"])
        assert bob[0] == 202
        assert await pg.fetchval("SELECT count(*) FROM jobs WHERE owner = 'alice'") == cap


async def test_postgres_down_under_a_waiting_group_is_503_for_each_and_records_none(
    services: Services, pg: Conn, jobs_redis: Redis, pg_proxy: TcpProxy
) -> None:
    async with running_gateway(gateway_settings(services.through_postgres_port(pg_proxy.port))) as api:
        warm = await _post(api, _echo("warm"))  # the pool is open and working
        assert warm[0] == 202
        async with held(api, pg):
            tasks = await _gathered(api, *[(_echo(i), "carol") for i in range(20)])
            pg_proxy.cut()
            answers = await asyncio.gather(*tasks)
        pg_proxy.restore()

    assert {(status, content_type) for status, _, content_type in answers} == {(503, "application/problem+json")}
    assert {problem["code"] for _, problem, _ in answers} == {"dependency_unavailable"}
    assert await pg.fetchval("SELECT count(*) FROM jobs WHERE owner = 'carol'") == 0
    assert await jobs_redis.keys("arq:job:*") == [f"arq:job:{warm[1]['id']}".encode()]


async def test_a_crowd_of_one_principal_is_limited_exactly_though_its_limiter_calls_share_round_trips(
    services: Services, pg: Conn, jobs_redis: Redis
) -> None:
    settings = gateway_settings(services, security=SecurityConfig(rate_limit_per_minute=10))
    async with running_gateway(settings) as api:
        answers = await asyncio.gather(*(_post(api, _echo(i), as_="dave") for i in range(25)))
        other = await _post(api, _echo("e"), as_="erin")

    by_status = _by_status(answers)
    assert {status: len(bodies) for status, bodies in by_status.items()} == {202: 10, 429: 15}
    assert {content_type for status, _, content_type in answers if status == 429} == {"application/problem+json"}
    assert other[0] == 202
    assert await pg.fetchval("SELECT count(*) FROM jobs WHERE owner = 'dave'") == 10


async def test_a_crowd_posting_while_redis_is_down_is_accepted_and_each_job_left_to_the_reconciler(
    services: Services, pg: Conn, jobs_redis: Redis, proxy: TcpProxy
) -> None:
    settings = gateway_settings(services, jobs_url=proxy.url(services.jobs_db), enqueue_timeout_s=0.5)
    async with running_gateway(settings) as api:
        hand_over, registry = api.app[HAND_OVER], api.app[METRICS].registry

        def deferred() -> float:
            return registry.get_sample_value("conveyor_gateway_enqueue_deferred_total") or 0.0

        up = await _post(api, _echo("up"))
        assert up[0] == 202
        before, groups = deferred(), hand_over.groups.groups
        proxy.cut()

        answers = await asyncio.gather(*(_post(api, _echo(i)) for i in range(40)))

        assert {status for status, _, _ in answers} == {202}
        ids = [job["id"] for _, job, _ in answers]
        queued = await pg.fetchval("SELECT count(*) FROM jobs WHERE id = ANY($1::text[]) AND status = 'queued'", ids)
        assert queued == 40
        assert deferred() - before == 40
        assert hand_over.groups.groups - groups < 40, "the enqueues went in groups"
    assert await jobs_redis.keys("arq:job:*") == [f"arq:job:{up[1]['id']}".encode()]
