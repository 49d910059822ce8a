"""Guarantee 9 under `conveyor run`: children SIGKILLed again and again while 2,000 jobs flow; none is lost."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from shared.core import json
from support.helpers import eventually, make_token
from support.stack import Conn, Services, SmtpSink, free_port
from support.supervisor import Run, conveyor_run, get_json, services_env

JOBS = 2000
TICKS = 10  # one SIGKILL every TICK_S, for 30 s
TICK_S = 3.0
GATEWAY_TICK = 4
HELD = 3  # requests the gateway is reading when it is killed
WORKERS = ("default-1", "default-2", "heavy-1", "scheduler-1")
SEED = 9  # the order of the victims, and which clients send again: the same every run


@dataclass
class Client:
    """A client that retries POST /api/v1/jobs with the same idempotency key until it gets an answer."""

    http: aiohttp.ClientSession
    base: str
    ids: dict[int, str] = field(default_factory=dict)
    cut_off: set[int] = field(default_factory=set)  # requests that met a dead gateway at least once

    def body(self, i: int) -> dict[str, Any]:
        return {
            "type": "system.echo", "payload": {"data": i, "sleep_s": 0.2}, "max_attempts": 25,
            "idempotency_key": f"chaos-{i}",
        }  # fmt: skip

    async def post(self, i: int) -> tuple[int, str, str | None]:
        async def attempt() -> tuple[int, str, str | None] | None:
            try:
                async with self.http.post(f"{self.base}/api/v1/jobs", json=self.body(i)) as resp:
                    if resp.status >= 500:
                        self.cut_off.add(i)
                        return None
                    job = await resp.json()
                    assert resp.status in (200, 202), job
                    return resp.status, job["id"], resp.headers.get("Idempotent-Replayed")
            except (aiohttp.ClientError, TimeoutError):
                self.cut_off.add(i)
                return None

        return await eventually(attempt, within=60, interval=0.2)

    async def hold(self, numbers: range) -> Callable[[], Awaitable[None]]:
        """POST each of `numbers` with only the first byte of its body sent: in flight until the returned
        `release()`, which sends the rest and checks that every one was cut off (never answered)."""
        released = asyncio.Event()
        sent = [asyncio.Event() for _ in numbers]

        async def one(i: int, sent: asyncio.Event) -> int | None:
            body = json.dumps(self.body(i))

            async def chunks() -> AsyncIterator[bytes]:
                yield body[:1]
                sent.set()  # the request line, headers and a first byte are on their way
                await released.wait()
                yield body[1:]

            headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
            try:
                async with self.http.post(f"{self.base}/api/v1/jobs", data=chunks(), headers=headers) as resp:
                    return resp.status
            except (aiohttp.ClientError, TimeoutError):
                self.cut_off.add(i)
                return None

        tasks = [asyncio.create_task(one(i, event)) for i, event in zip(numbers, sent, strict=True)]
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in sent)), timeout=30)

        async def release() -> None:
            released.set()
            assert await asyncio.gather(*tasks) == [None] * len(numbers), "answered by a gateway that was killed"

        return release

    async def submit(self, numbers: range, concurrency: int = 8) -> None:
        limit = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with limit:
                _, job_id, _ = await self.post(i)
                self.ids[i] = job_id

        await asyncio.gather(*(one(i) for i in numbers))


async def _accepted(client: Client, wave: range, at_least: int) -> bool | None:
    return True if sum(i in client.ids for i in wave) >= at_least else None


async def _busy(run: Run, child: str) -> bool | None:
    """True once the worker `child` reports a running job (so killing it leaves that job to the others)."""
    port = run.metrics_port(child)
    status, health = await get_json(f"http://127.0.0.1:{port}/health")
    return True if status == 200 and health["running"] > 0 else None


async def _back(run: Run, child: str, old_pid: int) -> int:
    """The new pid of `child` once it has restarted and reported ready again."""

    async def restarted() -> int | None:
        pid = run.pid(child)
        return pid if pid not in (None, old_pid) else None

    return await eventually(restarted, within=20, interval=0.1)


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_sigkilled_children_come_back_and_every_accepted_job_succeeds(
    services: Services, pg: Conn, jobs_redis: Redis, smtp: SmtpSink, tmp_path: Path
) -> None:
    api_port = free_port()
    env = services_env(
        services, smtp.port, api_port,
        JOB_LEASE_S="2", RATE_LIMIT_PER_MINUTE="1000000", SHUTDOWN_GRACE_S="5", LOG_FORMAT="json",
    )  # fmt: skip
    base = f"http://127.0.0.1:{api_port}"
    headers = {"Authorization": f"Bearer {make_token('chaos')}"}
    async with (
        conveyor_run(env=env, cwd=tmp_path) as run,
        aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=10)) as http,
    ):
        await run.banner()
        client = Client(http, base)
        # Each worker is killed two or three times: restarts stay within the first backoff steps (≤ 2 s).
        rng = random.Random(SEED)
        victims = [*rng.sample(WORKERS, 4), *rng.sample(WORKERS, 4), rng.choice(WORKERS)]
        victims.insert(GATEWAY_TICK, "gateway")
        per_tick = JOBS // TICKS
        waves: list[asyncio.Task[None]] = []
        loop = asyncio.get_running_loop()
        for tick, victim in enumerate(victims):
            tick_at = loop.time()
            wave = range(tick * per_tick, (tick + 1) * per_tick)
            waves.append(asyncio.create_task(client.submit(wave)))
            await eventually(partial(_accepted, client, wave, per_tick // 2), within=30)  # mid-wave
            pid = run.pid(victim)
            assert pid is not None, victim
            release = await client.hold(range(wave.start, wave.start + HELD)) if victim == "gateway" else None
            if victim.startswith("default-"):
                await eventually(partial(_busy, run, victim), within=30)  # it holds a job the others must run
            os.kill(pid, signal.SIGKILL)
            if release is not None:
                await release()
            await _back(run, victim, pid)
            await asyncio.sleep(max(0.0, tick_at + TICK_S - loop.time()))  # the pace of the kills, not a wait
        await asyncio.gather(*waves)

        restarts = run.events("supervisor.child_restarted")
        assert sorted(e["child"] for e in restarts) == sorted(victims)
        assert {(e["exit_code"], e["signal"]) for e in restarts} == {(-9, "SIGKILL")}
        assert run.events("supervisor.giving_up") == []

        # Clients that met the dead gateway, and some that did not, send their request again: the original job.
        again = sorted(client.cut_off | set(rng.sample(range(JOBS), 50)))
        assert len(client.cut_off) >= HELD, "the gateway was killed while requests were in flight"
        for i in again:
            status, job_id, replayed = await client.post(i)
            assert (status, job_id, replayed) == (200, client.ids[i], "true")

        assert len(set(client.ids.values())) == JOBS

        async def all_done() -> dict[str, int] | None:
            rows = await pg.fetch("SELECT status, count(*) AS n FROM jobs GROUP BY status")
            counts = {row["status"]: row["n"] for row in rows}
            return counts if set(counts) <= {"succeeded", "failed", "cancelled"} else None

        assert await eventually(all_done, within=90, interval=0.5) == {"succeeded": JOBS}, "none lost, none stuck"
        taken_over = await pg.fetchval("SELECT count(*) FROM jobs WHERE attempts > 1")
        assert taken_over > 0, "killed workers held running jobs; the others ran them"
        print(f"{len(client.cut_off)} requests met the dead gateway; {taken_over} jobs were taken over")  # noqa: T201
        assert await run.stop() == 0
        assert "resource_tracker" not in run.text(), "a killed heavy worker's pool leaves no warning behind"
