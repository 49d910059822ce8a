"""The bench's client of a running Conveyor stack: jobs POSTed over HTTP, progress read from the ledger."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import asyncpg
import jwt
from conveyor_stack import Stack
from harness import STALL_S, BenchError, Config, Load, closed_loop
from redis.asyncio import Redis

from shared.core import json

if TYPE_CHECKING:
    Conn = asyncpg.Connection[asyncpg.Record]
else:
    Conn = asyncpg.Connection


@dataclass
class Client:
    stack: Stack
    session: aiohttp.ClientSession
    pg: Conn
    redis: Redis
    cache: Redis
    headers: dict[str, str]
    refused: collections.Counter[str] = field(default_factory=collections.Counter)

    @property
    def cfg(self) -> Config:
        return self.stack.cfg

    @property
    def jobs_url(self) -> str:
        return f"http://127.0.0.1:{self.stack.api_port}/api/v1/jobs"

    @property
    def batches_url(self) -> str:
        return f"http://127.0.0.1:{self.stack.api_port}/api/v1/batches"

    def check_alive(self) -> None:
        for process in self.stack.processes():
            process.check_alive()


def bench_token(secret: str, sub: str = "bench", role: str = "user") -> str:
    return jwt.encode({"sub": sub, "role": role, "exp": int(time.time()) + 3600}, secret, algorithm="HS256")


async def admin_post(c: Client, path: str) -> None:
    """POST `path` (e.g. a queue's pause) as an admin; BenchError unless it answers 200."""
    headers = {"Authorization": f"Bearer {bench_token(c.cfg.jwt_secret, 'bench-admin', 'admin')}"}
    async with c.session.post(f"http://127.0.0.1:{c.stack.api_port}{path}", headers=headers) as resp:
        if resp.status != 200:
            raise BenchError(f"POST {path} answered {resp.status}: {(await resp.read())[:300]!r}")


@contextlib.asynccontextmanager
async def conveyor_client(stack: Stack) -> AsyncIterator[Client]:
    cfg = stack.cfg
    headers = {"Authorization": f"Bearer {bench_token(cfg.jwt_secret)}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=cfg.concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        pg = await asyncpg.connect(cfg.database_url)
        probe, cache = Redis.from_url(cfg.jobs_url), Redis.from_url(cfg.cache_url)
        try:
            yield Client(stack, session, pg, probe, cache, headers)
        finally:
            await cache.aclose()
            await probe.aclose()
            await pg.close()


async def post_job(c: Client, i: int, *, extra: dict[str, Any] | None = None, as_: str | None = None) -> str | None:
    """POST one `system.echo` job; its id on 202, else None (a refusal or a connection error)."""
    body = json.dumps({"type": "system.echo", "payload": {"data": i}, **(extra or {})})
    headers = (
        c.headers if as_ is None else {**c.headers, "Authorization": f"Bearer {bench_token(c.cfg.jwt_secret, as_)}"}
    )
    try:
        async with c.session.post(c.jobs_url, data=body, headers=headers) as resp:
            raw = await resp.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        c.refused[type(exc).__name__] += 1
        return None
    if resp.status != 202:
        c.refused[f"HTTP {resp.status}"] += 1
        return None
    return str(json.loads(raw)["id"])


async def post_batch(c: Client, size: int, first: int = 0) -> int:
    """POST one batch of `size` `system.echo` jobs; how many it recorded (its `total`) on 202, else 0."""
    jobs = [{"type": "system.echo", "payload": {"data": first + i}} for i in range(size)]
    try:
        async with c.session.post(c.batches_url, data=json.dumps({"jobs": jobs}), headers=c.headers) as resp:
            raw = await resp.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        c.refused[f"batch {type(exc).__name__}"] += 1
        return 0
    if resp.status != 202:
        c.refused[f"batch HTTP {resp.status}"] += 1
        return 0
    return int(json.loads(raw)["total"])


async def post_jobs(c: Client, n: int) -> Load:
    async def call(i: int) -> bool:
        return await post_job(c, i) is not None

    return await closed_loop(n, c.cfg.concurrency, call)


async def wait_rows(c: Client, where: str, target: int, *, interval: float = 0.05) -> int:
    """Poll the ledger until `target` rows match `where`; stop (with a warning) when it stalls."""
    last, last_change = -1, time.monotonic()
    while True:
        count = int(await c.pg.fetchval(f"SELECT count(*) FROM jobs WHERE {where}"))  # noqa: S608 - our constants
        if count >= target:
            return count
        if count != last:
            last, last_change = count, time.monotonic()
        elif time.monotonic() - last_change > STALL_S:
            print(f"  ! ledger stalled at {count}/{target} rows with {where}", file=sys.stderr)
            return count
        c.check_alive()
        await asyncio.sleep(interval)


async def wait_started(c: Client, job_id: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    query = "SELECT started_at IS NOT NULL FROM jobs WHERE id = $1"
    while not await c.pg.fetchval(query, job_id):
        if time.monotonic() > deadline:
            print(f"  ! {job_id} did not start within {within:g} s", file=sys.stderr)
            return
        await asyncio.sleep(0.002)


async def ledger_span_s(c: Client, start: str, end: str) -> float | None:
    span = await c.pg.fetchval(f"SELECT extract(epoch FROM max({end}) - min({start})) FROM jobs")  # noqa: S608
    return None if span is None else float(span)


async def truncate_jobs(c: Client) -> None:
    await c.pg.execute("TRUNCATE jobs CASCADE")  # and what references jobs (mail_log)


async def reset(c: Client) -> None:
    """No jobs anywhere: an empty ledger and empty Redis databases (call with no worker running)."""
    await truncate_jobs(c)
    await c.redis.flushdb()
    await c.cache.flushdb()
