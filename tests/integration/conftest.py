"""Fixtures over real services: a throwaway PostgreSQL database, a claimed Redis db pair, the gateway, workers, SMTP."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from support import redis_pair, throwaway_db
from support.helpers import postgres_admin_url, redis_base_url
from support.stack import (
    Api,
    Conn,
    Services,
    SmtpSink,
    StartWorker,
    gateway_settings,
    running_gateway,
    smtp_server,
    worker_settings,
)
from support.tcp_proxy import TcpProxy
from workers.processes import PROCESSES, WorkerProcess


@pytest.fixture(scope="session")
async def services(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Services]:
    """A claimed pair of Redis databases and a throwaway PostgreSQL database, migrated once, for this session."""
    cache_db = await _claim_redis_pair()
    try:
        url = await _create_database()
        try:
            storage = str(tmp_path_factory.mktemp("storage"))
            yield Services(
                redis_base=redis_base_url(), database_url=url, cache_db=cache_db, jobs_db=cache_db + 1,
                storage_dir=storage,
            )  # fmt: skip
        finally:
            await throwaway_db.drop_database(postgres_admin_url(), url)
    finally:
        await redis_pair.release_pair(redis_base_url(), cache_db)


async def _claim_redis_pair() -> int:
    """Claim a free pair of Redis databases so concurrent test sessions never share queues."""
    try:
        cache_db = await redis_pair.claim_pair(redis_base_url(), str(os.getpid()))
    except (OSError, RedisError) as exc:
        raise RuntimeError(f"Redis for tests is unreachable at TEST_REDIS_URL={redis_base_url()}: {exc}") from exc
    if cache_db is None:
        prefix = redis_pair.LOCK_PREFIX
        raise RuntimeError(f"every Redis database pair for tests is in use (keys {prefix}* in db 0)")
    return cache_db


async def _create_database() -> str:
    admin_url = postgres_admin_url()
    try:
        return await throwaway_db.create_database(admin_url, "conveyor_test")
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise RuntimeError(f"PostgreSQL for tests is unreachable at TEST_DATABASE_URL={admin_url}: {exc}") from exc


@pytest.fixture
async def pg(services: Services) -> AsyncIterator[Conn]:
    """A direct connection to the test ledger, emptied before the test."""
    conn = await asyncpg.connect(services.database_url)
    tables = await conn.fetch(
        "SELECT quote_ident(tablename) AS t FROM pg_tables"
        " WHERE schemaname = 'public' AND tablename <> 'schema_migrations'"
    )
    await conn.execute(f"TRUNCATE {', '.join(r['t'] for r in tables)} CASCADE")
    yield conn
    await conn.close()


@pytest.fixture
async def jobs_redis(services: Services) -> AsyncIterator[Redis]:
    """The jobs database, flushed (with the cache database) before the test."""
    cache = Redis.from_url(services.cache_url)
    await cache.flushdb()
    await cache.aclose()
    client = Redis.from_url(services.jobs_url)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
async def api(services: Services, pg: Conn, jobs_redis: Redis) -> AsyncIterator[Api]:
    async with running_gateway(gateway_settings(services)) as client:
        yield client


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    with smtp_server() as sink:
        yield sink


@pytest.fixture
async def start_worker(services: Services, pg: Conn, jobs_redis: Redis) -> AsyncIterator[StartWorker]:
    """Start real worker process definitions in this event loop; each is stopped at teardown."""
    running: list[tuple[WorkerProcess, asyncio.Task[None]]] = []

    async def start(
        name: str = "default",
        *,
        via: Services | None = None,
        handlers: Any = None,
        registry: Any = None,
        **options: Any,
    ) -> WorkerProcess:
        process = WorkerProcess(
            PROCESSES[name], worker_settings(via or services, **options), handlers=handlers, registry=registry
        )
        task = asyncio.create_task(process.run())
        running.append((process, task))
        waiter = asyncio.create_task(process.started())
        done, _ = await asyncio.wait({task, waiter}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # surfaces a start-up error
        assert waiter in done, "the worker did not start within 10 s"
        return process

    yield start
    for process, _ in running:
        process.stop()
    for _, task in running:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=15)


@pytest.fixture
async def pg_proxy(services: Services) -> AsyncIterator[TcpProxy]:
    """A TCP proxy in front of the test PostgreSQL that a test can cut and restore."""
    p = TcpProxy(*services.postgres_address)
    await p.start()
    yield p
    await p.close()


@pytest.fixture
async def proxy(services: Services) -> AsyncIterator[TcpProxy]:
    """A TCP proxy in front of the test Redis that a test can cut and restore."""
    host_port = services.redis_base.removeprefix("redis://").rsplit("@", 1)[-1]
    host, _, port = host_port.partition(":")
    p = TcpProxy(host or "127.0.0.1", int(port or 6379))
    await p.start()
    yield p
    await p.close()
