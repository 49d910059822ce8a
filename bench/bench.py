"""`make bench`: Conveyor (gateway + one worker process) beside stock arq on the same Redis, printed as ratios."""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import ctypes
import importlib.metadata
import math
import os
import platform
import random
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import dataset_bench
import jwt
from arq.connections import RedisSettings, create_pool
from arq.worker import Worker, func
from pydantic import AliasChoices
from pydantic_settings import BaseSettings
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.core import json
from shared.core.settings import GatewaySettings, WorkerSettings
from shared.infra import db

if TYPE_CHECKING:
    Conn = asyncpg.Connection[asyncpg.Record]
else:
    Conn = asyncpg.Connection


T = TypeVar("T")
Figures = dict[str, float]

# Test sessions and benches claim a pair of Redis databases (cache, cache + 1) through these keys in db 0.
REDIS_PAIR_LOCK: Final = "conveyor:test-session:db"
ARQ_POLL_S: Final = 0.5  # stock arq's poll_delay: its pickup samples are spread uniformly over one period
TUNED_ARQ: Final = {"max_jobs": 100, "poll_delay": 0.01}  # DESIGN.md's "arq tuned", run under uvloop
STALL_S: Final = 20.0  # give up waiting when the ledger makes no progress for this long
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """The bench could not measure (a service or a process it started failed); exits non-zero."""


# --- configuration ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    jobs: int
    arq_jobs: int
    latency_samples: int
    arq_latency_samples: int
    rounds: int
    concurrency: int
    latency_gap_s: float
    redis_base: str
    admin_url: str
    database_url: str = ""
    cache_db: int = 12  # the jobs database is the next one; see `redis_pair`
    jwt_secret: str = field(default_factory=lambda: secrets.token_hex(32))

    @property
    def cache_url(self) -> str:
        return with_path(self.redis_base, f"/{self.cache_db}")

    @property
    def jobs_url(self) -> str:
        return with_path(self.redis_base, f"/{self.cache_db + 1}")


def redacted(url: str) -> str:
    """`url` without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))


def with_path(url: str, path: str) -> str:
    """`url` with its path (a Redis database number, a PostgreSQL database name) replaced."""
    return urlunsplit(urlsplit(url)._replace(path=path))


def parse_args(argv: Sequence[str] | None = None) -> Config:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--jobs", type=int, default=3000, help="jobs per Conveyor phase and tuned-arq drain (3000)")
    p.add_argument("--arq-jobs", type=int, default=1000, help="jobs per stock-arq drain; it runs ~200/s (1000)")
    p.add_argument("--latency-samples", type=int, default=200, help="Conveyor pickup samples per round (200)")
    p.add_argument("--arq-latency-samples", type=int, default=20, help="stock arq pickup samples per round (20)")
    p.add_argument("--rounds", type=int, default=3, help="rounds; every figure is the median over rounds (3)")
    p.add_argument("--concurrency", type=int, default=64, help="requests/enqueues in flight (64)")
    p.add_argument("--latency-gap-ms", type=float, default=50.0, help="random idle gap before a Conveyor sample")
    a = p.parse_args(argv)
    return Config(
        jobs=a.jobs,
        arq_jobs=min(a.arq_jobs, a.jobs),
        latency_samples=a.latency_samples,
        arq_latency_samples=a.arq_latency_samples,
        rounds=a.rounds,
        concurrency=a.concurrency,
        latency_gap_s=a.latency_gap_ms / 1000,
        redis_base=os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379"),
        admin_url=os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )


# --- small helpers ------------------------------------------------------------------------------------


def uvloop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a dependency everywhere but Windows
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def run(coro: Coroutine[Any, Any, T], *, fast_loop: bool = False) -> T:
    """Run one phase in its own event loop: stock arq gets asyncio's, the rest uvloop where installed."""
    factory = uvloop_factory() if fast_loop else None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(cancelled_by_sigterm(coro))


async def cancelled_by_sigterm(coro: Coroutine[Any, Any, T]) -> T:
    """Await `coro`; SIGTERM cancels it, so its `finally` blocks run, then stops the bench with a BenchError."""
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    terminated = False

    def on_sigterm() -> None:
        nonlocal terminated
        terminated = True
        if task is not None:
            task.cancel()

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        return await coro
    except asyncio.CancelledError:
        if terminated:
            raise BenchError("stopped by SIGTERM") from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)  # resets SIGTERM to its default: put ours back
        signal.signal(signal.SIGTERM, exit_on_sigterm)


def exit_on_sigterm(signum: int, _frame: object) -> None:
    """SIGTERM outside an event loop: unwind, so every `finally` runs (subprocesses stopped, database dropped)."""
    raise SystemExit(128 + signum)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]


def rate(count: int, seconds: float | None) -> float:
    return count / seconds if seconds else math.nan


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class RedisSnap:
    commands: int
    cpu_s: float
    dataset_bytes: int


async def redis_snap(client: Redis) -> RedisSnap:
    info = await client.info()
    cpu = float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
    return RedisSnap(int(info["total_commands_processed"]), cpu, int(info["used_memory_dataset"]))


def redis_costs(before: RedisSnap, after: RedisSnap, jobs: int) -> Figures:
    """Redis-wide counters: any other client of this Redis during the phase inflates them."""
    return {
        "redis_cmds_per_job": (after.commands - before.commands) / jobs,
        "redis_cpu_us_per_job": (after.cpu_s - before.cpu_s) * 1e6 / jobs,
        "redis_bytes_per_job": (after.dataset_bytes - before.dataset_bytes) / jobs,
    }


async def flush_redis(cfg: Config) -> None:
    for url in (cfg.cache_url, cfg.jobs_url):
        client = Redis.from_url(url)
        try:
            await client.flushdb()
        finally:
            await client.aclose()


@dataclass(frozen=True)
class Load:
    """A closed-loop burst: `ok` successful calls out of `sent`, their latencies, its wall time."""

    sent: int
    ok: int
    elapsed_s: float
    latencies_s: list[float]

    def figures(self, prefix: str) -> Figures:
        return {
            f"{prefix}_rate": rate(self.ok, self.elapsed_s),
            f"{prefix}_p50_ms": percentile(self.latencies_s, 0.50) * 1000,
            f"{prefix}_p99_ms": percentile(self.latencies_s, 0.99) * 1000,
        }


async def closed_loop(n: int, concurrency: int, call: Callable[[int], Awaitable[bool]]) -> Load:
    """Make `n` calls with at most `concurrency` in flight; each lane starts its next call when one ends."""
    pending = iter(range(n))
    latencies: list[float] = []
    ok = 0

    async def lane() -> None:
        nonlocal ok
        for i in pending:
            started = time.perf_counter()
            if await call(i):
                ok += 1
                latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return Load(n, ok, time.perf_counter() - started, latencies)


# --- services -----------------------------------------------------------------------------------------


async def check_services(cfg: Config) -> dict[str, str]:
    """Ping Redis and PostgreSQL; BenchError with the URL and reason when either is unreachable."""
    client = Redis.from_url(cfg.jobs_url, socket_connect_timeout=3)
    try:
        redis_version = str((await client.info("server"))["redis_version"])
    except (OSError, RedisError) as exc:
        raise BenchError(f"Redis is unreachable at TEST_REDIS_URL={redacted(cfg.redis_base)}: {exc}") from exc
    finally:
        await client.aclose()
    try:
        conn = await asyncpg.connect(cfg.admin_url, timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise BenchError(f"PostgreSQL is unreachable at TEST_DATABASE_URL={redacted(cfg.admin_url)}: {exc}") from exc
    try:
        pg_version = str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()
    return {"redis": redis_version, "postgresql": pg_version}


async def create_database(admin_url: str) -> str:
    """A throwaway database with the ledger schema; returns its URL."""
    name = f"conveyor_bench_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(admin_url, timeout=5)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = with_path(admin_url, f"/{name}")
    conn = await asyncpg.connect(url, timeout=5)
    try:
        await db.apply_migrations(conn)
    finally:
        await conn.close()
    return url


async def drop_database(admin_url: str, url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    admin = await asyncpg.connect(admin_url, timeout=5)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def pair_lock(cfg: Config, cache_db: int, *, take: bool) -> bool:
    """Take (or release) the db-0 key that claims the Redis databases `cache_db` and `cache_db + 1`."""
    locks = Redis.from_url(with_path(cfg.redis_base, "/0"), socket_connect_timeout=3)
    try:
        if take:
            return bool(await locks.set(f"{REDIS_PAIR_LOCK}{cache_db}", f"bench:{os.getpid()}", nx=True, ex=3600))
        return bool(await locks.delete(f"{REDIS_PAIR_LOCK}{cache_db}"))
    except (OSError, RedisError) as exc:
        raise BenchError(f"Redis is unreachable at TEST_REDIS_URL={redacted(cfg.redis_base)}: {exc}") from exc
    finally:
        await locks.aclose()


@contextlib.contextmanager
def redis_pair(cfg: Config) -> Iterator[Config]:
    """Claim a free pair of Redis databases as test sessions do, so a bench never flushes a running test's."""
    for cache_db in range(2, 15, 2):
        if run(pair_lock(cfg, cache_db, take=True)):
            break
    else:
        raise BenchError(f"every Redis database pair is in use (keys {REDIS_PAIR_LOCK}* in db 0)")
    try:
        yield replace(cfg, cache_db=cache_db)
    finally:
        run(pair_lock(cfg, cache_db, take=False))


@contextlib.contextmanager
def bench_database(cfg: Config) -> Iterator[Config]:
    url = run(create_database(cfg.admin_url))
    try:
        yield replace(cfg, database_url=url)
    finally:
        run(drop_database(cfg.admin_url, url))


async def background_redis_rate(cfg: Config, seconds: float = 0.5) -> float:
    """Commands/s other clients send this Redis while the bench is idle (they inflate Redis-wide counters)."""
    client = Redis.from_url(cfg.jobs_url)
    try:
        before = await redis_snap(client)
        await asyncio.sleep(seconds)
        after = await redis_snap(client)
    finally:
        await client.aclose()
    return (after.commands - before.commands - 1) / seconds


# --- stock arq ----------------------------------------------------------------------------------------


async def noop(ctx: dict[str, Any]) -> None:
    pass


async def stamp(ctx: dict[str, Any], enqueued_at: float) -> None:
    """Pickup probe: the handler's start, relative to the perf_counter taken just before enqueue_job."""
    ctx["started"].put_nowait(time.perf_counter() - enqueued_at)


async def arq_drain(cfg: Config, n: int, **worker_options: Any) -> Figures:
    """Enqueue `n` no-op jobs with arq's own client, then time a burst worker draining them."""
    await flush_redis(cfg)
    settings = RedisSettings.from_dsn(cfg.jobs_url)
    probe = Redis.from_url(cfg.jobs_url)
    worker = Worker([noop], redis_settings=settings, burst=True, handle_signals=False, **worker_options)
    try:
        before = await redis_snap(probe)
        enqueued = await arq_enqueue(settings, n, cfg.concurrency)
        cpu0, t0 = time.process_time(), time.perf_counter()
        await worker.async_run()
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        await worker.close()
        after = await redis_snap(probe)
    finally:
        await worker.close()  # idempotent
        await probe.aclose()
    done = worker.jobs_complete
    return {
        **enqueued.figures("enqueue"),
        "drain_rate": rate(done, elapsed),
        "worker_cpu_ms_per_job": cpu * 1000 / max(done, 1),
        **redis_costs(before, after, max(done, 1)),
    }


async def arq_enqueue(settings: RedisSettings, n: int, concurrency: int) -> Load:
    """arq's own client: `n` enqueue_job calls, `concurrency` in flight."""
    pool = await create_pool(settings)

    async def call(_: int) -> bool:
        return await pool.enqueue_job("noop") is not None

    try:
        return await closed_loop(n, concurrency, call)
    finally:
        await pool.aclose(close_connection_pool=True)


async def arq_pickup(cfg: Config, samples: int) -> Figures:
    """One job at a time on an idle default worker: enqueue_job call -> handler start (perf_counter)."""
    await flush_redis(cfg)
    settings = RedisSettings.from_dsn(cfg.jobs_url)
    started: asyncio.Queue[float] = asyncio.Queue()
    worker = Worker(
        [func(stamp, name="stamp")], redis_settings=settings, handle_signals=False, ctx={"started": started}
    )
    task = asyncio.create_task(worker.async_run())
    pool = await create_pool(settings)
    latencies: list[float] = []
    try:
        for i in range(samples + 1):  # the first one warms up and is not counted
            await asyncio.sleep(random.uniform(0, ARQ_POLL_S))
            await pool.enqueue_job("stamp", time.perf_counter())
            latency = await asyncio.wait_for(started.get(), timeout=10)
            latencies += [latency] if i else []
    finally:
        await asyncio.gather(*worker.tasks.values(), return_exceptions=True)  # let the last job record its result
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
            await worker.close()
        await pool.aclose(close_connection_pool=True)
    return {"pickup_p50_ms": percentile(latencies, 0.5) * 1000, "pickup_p99_ms": percentile(latencies, 0.99) * 1000}


async def stock_arq_round(cfg: Config) -> Figures:
    return {**await arq_drain(cfg, cfg.arq_jobs), **await arq_pickup(cfg, cfg.arq_latency_samples)}


async def tuned_arq_round(cfg: Config) -> Figures:
    return await arq_drain(cfg, cfg.jobs, **TUNED_ARQ)


# --- the Conveyor stack (subprocesses) ----------------------------------------------------------------


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it if the bench itself dies (Linux prctl PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise BenchError(f"{self.name} exited with {self.popen.returncode}:\n{self.tail()}")

    def tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join("    " + line for line in text[-lines:])

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def setting_names() -> set[str]:
    """Every environment variable Conveyor's gateway and worker settings read."""
    names: set[str] = set()
    for top in (GatewaySettings, WorkerSettings):
        for section in top.model_fields.values():
            model = section.annotation
            if isinstance(model, type) and issubclass(model, BaseSettings):
                aliases = (f.validation_alias for f in model.model_fields.values())
                names |= {str(a.choices[0]) for a in aliases if isinstance(a, AliasChoices)}
    return names


@dataclass
class Stack:
    """The gateway (kept for the whole run) and one `default` worker (started and stopped every round)."""

    cfg: Config
    logdir: Path
    api_port: int = field(default_factory=free_port)
    gateway: Process | None = None
    worker: Process | None = None

    def overrides(self) -> dict[str, str]:
        c = self.cfg
        return {
            "REDIS_CACHE_URL": c.cache_url, "REDIS_JOBS_URL": c.jobs_url, "DATABASE_URL": c.database_url,
            "JWT_SECRET": c.jwt_secret, "API_HOST": "127.0.0.1", "API_PORT": str(self.api_port),
            "WORKER_METRICS_HOST": "127.0.0.1", "WORKER_METRICS_PORT": "0",
            "LOG_LEVEL": "WARNING", "LOG_FORMAT": "console", "SHUTDOWN_GRACE_S": "5",
            "RATE_LIMIT_PER_MINUTE": "1000000000",  # the bench is one caller sending thousands of jobs a second
            "ENVIRONMENT": "development",  # on loopback, with system.echo, as `make run`
        }  # fmt: skip

    def inherited(self) -> list[str]:
        """Conveyor settings taken from the caller's environment (e.g. WORKER_MAX_JOBS to try a tuning)."""
        return sorted(n for n in setting_names() - set(self.overrides()) if n in os.environ)

    def spawn(self, name: str, module: str, *args: str) -> Process:
        log = self.logdir / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                env={**os.environ, **self.overrides()},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,  # the bench is single-threaded
            )
        return Process(name, popen, log)

    def start_gateway(self) -> Process:
        self.gateway = self.spawn("gateway", "gateway")
        return self.gateway

    def start_worker(self) -> Process:
        self.worker = self.spawn("worker", "workers", "default")
        return self.worker

    def stop_worker(self) -> None:
        if self.worker is not None:
            self.worker.stop()

    def log_summary(self) -> list[str]:
        """What the gateway and the last worker logged (LOG_LEVEL=WARNING: warnings and errors only)."""
        lines: list[str] = []
        for process in (self.gateway, self.worker):
            if process is not None and (count := len(process.log.read_text(errors="replace").splitlines())):
                lines.append(f"{process.name} logged {count} line(s) at WARNING or above; the last ones:")
                lines.append(process.tail(5))
        return lines

    def close(self) -> None:
        for process in (self.worker, self.gateway):
            if process is not None:
                process.stop()


@contextlib.contextmanager
def conveyor_stack(cfg: Config) -> Iterator[Stack]:
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-") as logdir:
        stack = Stack(cfg, Path(logdir))
        try:
            yield stack
        finally:
            stack.close()


async def wait_ready(url: str, process: Process, within: float = 30.0) -> None:
    """Poll `url` until it answers 200; BenchError with the process's log when it exits or times out."""
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while time.monotonic() < deadline:
            process.check_alive()
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise BenchError(f"{process.name} was not ready at {url} within {within:g} s:\n{process.tail()}")


# --- Conveyor phases ----------------------------------------------------------------------------------


@dataclass
class Client:
    stack: Stack
    session: aiohttp.ClientSession
    pg: Conn
    redis: Redis
    headers: dict[str, str]
    refused: collections.Counter[str] = field(default_factory=collections.Counter)

    @property
    def cfg(self) -> Config:
        return self.stack.cfg

    @property
    def jobs_url(self) -> str:
        return f"http://127.0.0.1:{self.stack.api_port}/api/v1/jobs"

    def check_alive(self) -> None:
        for process in (self.stack.gateway, self.stack.worker):
            if process is not None:
                process.check_alive()


def bench_token(secret: str, sub: str = "bench") -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 3600}, secret, algorithm="HS256")


@contextlib.asynccontextmanager
async def conveyor_client(stack: Stack) -> AsyncIterator[Client]:
    cfg = stack.cfg
    headers = {"Authorization": f"Bearer {bench_token(cfg.jwt_secret)}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=cfg.concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        pg = await asyncpg.connect(cfg.database_url)
        probe = Redis.from_url(cfg.jobs_url)
        try:
            yield Client(stack, session, pg, probe, headers)
        finally:
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


async def ledger_span_s(c: Client, start: str, end: str) -> float | None:
    span = await c.pg.fetchval(f"SELECT extract(epoch FROM max({end}) - min({start})) FROM jobs")  # noqa: S608
    return None if span is None else float(span)


async def gateway_phase(c: Client) -> tuple[Figures, int]:
    """POST N jobs with no worker running: the gateway alone (ledger insert + Redis enqueue per request)."""
    assert c.stack.gateway is not None  # noqa: S101 - started by the caller
    pid = c.stack.gateway.pid
    gw_cpu, client_cpu = cpu_seconds(pid), time.process_time()
    load = await post_jobs(c, c.cfg.jobs)
    per_request = 1000 / max(load.ok, 1)
    return {
        **load.figures("enqueue"),
        "gateway_cpu_ms_per_request": (cpu_seconds(pid) - gw_cpu) * per_request,
        "client_cpu_ms_per_request": (time.process_time() - client_cpu) * per_request,
    }, load.ok


async def drain_phase(c: Client, accepted: int) -> Figures:
    """Start a fresh worker on the queued backlog; rate from the ledger (first start -> last finish)."""
    worker = c.stack.start_worker()
    await wait_rows(c, "started_at IS NOT NULL", 1, interval=0.002)
    cpu0 = cpu_seconds(worker.pid)  # from the first job on: start-up (imports, pools) is not counted
    started0 = int(await c.pg.fetchval("SELECT count(*) FROM jobs WHERE started_at IS NOT NULL"))
    done = await wait_rows(c, "status = 'succeeded'", accepted)
    cpu = cpu_seconds(worker.pid) - cpu0
    return {
        "drain_rate": rate(done, await ledger_span_s(c, "started_at", "finished_at")),
        "worker_cpu_ms_per_job": cpu * 1000 / max(done - started0, 1),
        "worker_rss_mb": rss_mb(worker.pid),
    }


async def e2e_phase(c: Client) -> Figures:
    """POST N jobs while the worker runs; rate from the ledger (first insert -> last finish)."""
    await c.pg.execute("TRUNCATE jobs CASCADE")  # and what references jobs (mail_log)
    load = await post_jobs(c, c.cfg.jobs)
    done = await wait_rows(c, "status = 'succeeded'", load.ok)
    return {
        "e2e_rate": rate(done, await ledger_span_s(c, "created_at", "finished_at")),
        "e2e_post_rate": rate(load.ok, load.elapsed_s),
    }


async def pickup_phase(c: Client) -> Figures:
    """One job at a time on an idle worker: ledger created_at -> started_at, both PostgreSQL now()."""
    await c.pg.execute("TRUNCATE jobs CASCADE")  # and what references jobs (mail_log)
    for i in range(c.cfg.latency_samples):
        await asyncio.sleep(random.uniform(0, c.cfg.latency_gap_s))
        job_id = await post_job(c, i)
        if job_id is not None:
            await wait_started(c, job_id)
    rows = await c.pg.fetch(
        "SELECT extract(epoch FROM started_at - created_at) AS s FROM jobs WHERE started_at IS NOT NULL"
    )
    latencies = [float(r["s"]) for r in rows]
    return {"pickup_p50_ms": percentile(latencies, 0.5) * 1000, "pickup_p99_ms": percentile(latencies, 0.99) * 1000}


async def flood_phase(c: Client) -> Figures:
    """Pickup of one owner's jobs while another owner's high-priority backlog waits (the fair share at work).

    The flood: half a phase of high-priority jobs of FLOOD_SLEEP_S each from owner `flood`, far more than the
    worker's slots; then one normal job at a time from `bench`, ledger created_at -> started_at.
    """
    await c.pg.execute("TRUNCATE jobs CASCADE")  # and what references jobs (mail_log)
    flood = {"priority": "high", "payload": {"sleep_s": FLOOD_SLEEP_S}}

    async def call(i: int) -> bool:
        return await post_job(c, i, extra=flood, as_="flood") is not None

    load = await closed_loop(c.cfg.jobs // 2, c.cfg.concurrency, call)
    waited = []
    for i in range(FLOOD_SAMPLES):
        if not await c.pg.fetchval("SELECT count(*) FROM jobs WHERE owner = 'flood' AND status = 'queued'"):
            break  # the backlog is gone: a sample now would measure an idle worker
        job_id = await post_job(c, i)
        if job_id is not None:
            await wait_started(c, job_id, within=STALL_S)
            waited.append(await c.pg.fetchval(WAITED, job_id))
    await wait_rows(c, "status = 'succeeded'", load.ok + len(waited))
    latencies = [float(w) for w in waited if w is not None]
    return {"flood_pickup_p50_ms": percentile(latencies, 0.5) * 1000 if latencies else math.nan}


WAITED: Final = "SELECT extract(epoch FROM started_at - created_at) FROM jobs WHERE id = $1"
FLOOD_SLEEP_S: Final = 0.2
FLOOD_SAMPLES: Final = 10


async def wait_started(c: Client, job_id: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    query = "SELECT started_at IS NOT NULL FROM jobs WHERE id = $1"
    while not await c.pg.fetchval(query, job_id):
        if time.monotonic() > deadline:
            print(f"  ! {job_id} did not start within {within:g} s", file=sys.stderr)
            return
        await asyncio.sleep(0.002)


async def conveyor_round(stack: Stack) -> Figures:
    """Gateway alone, then a fresh worker drains that backlog, then end to end, then pickup latency."""
    await flush_redis(stack.cfg)
    async with conveyor_client(stack) as c:
        await c.pg.execute("TRUNCATE jobs CASCADE")  # and what references jobs (mail_log)
        before = await redis_snap(c.redis)
        gateway, accepted = await gateway_phase(c)
        drain = await drain_phase(c, accepted)
        costs = redis_costs(before, await redis_snap(c.redis), max(accepted, 1))
        e2e = await e2e_phase(c)
        pickup = await pickup_phase(c)
        flood = await flood_phase(c)
        if c.refused:
            print(f"  ! POSTs not accepted with 202: {dict(c.refused)}", file=sys.stderr)
    assert stack.gateway is not None  # noqa: S101
    return {**gateway, **drain, **costs, **e2e, **pickup, **flood, "gateway_rss_mb": rss_mb(stack.gateway.pid)}


# --- report -------------------------------------------------------------------------------------------


def medians(rounds: Sequence[Figures]) -> Figures:
    keys = rounds[0].keys() if rounds else []
    return {k: statistics.median(r[k] for r in rounds) for k in keys}


@dataclass(frozen=True)
class Row:
    metric: str
    conveyor: float
    arq: float
    higher_is_better: bool
    target: str = "-"
    met: bool | None = None

    @property
    def gain(self) -> float:
        """>1 means Conveyor is better: conveyor/arq for rates, arq/conveyor for latencies and costs."""
        num, den = (self.conveyor, self.arq) if self.higher_is_better else (self.arq, self.conveyor)
        return num / den if den else math.nan


def rows(conv: Figures, stock: Figures, tuned: Figures) -> list[Row]:
    c, a = conv, stock
    tuned_rate, arq_cmds = tuned["drain_rate"], a["redis_cmds_per_job"]
    return [
        Row("pickup latency p50, ms", c["pickup_p50_ms"], a["pickup_p50_ms"], False,
            "≤ 2 (SAQ ≈ 1.9)", c["pickup_p50_ms"] <= 2),
        Row("pickup latency p99, ms", c["pickup_p99_ms"], a["pickup_p99_ms"], False, "≤ 5", c["pickup_p99_ms"] <= 5),
        Row("drain, 1 worker, jobs/s", c["drain_rate"], a["drain_rate"], True,
            f"≥ tuned arq+uvloop here, {tuned_rate:,.0f} (ref 3,000)", c["drain_rate"] >= tuned_rate),
        Row("gateway enqueue, req/s", c["enqueue_rate"], a["enqueue_rate"], True,
            "≥ 3,000", c["enqueue_rate"] >= 3000),
        Row("gateway enqueue p50, ms", c["enqueue_p50_ms"], a["enqueue_p50_ms"], False),
        Row("gateway enqueue p99, ms", c["enqueue_p99_ms"], a["enqueue_p99_ms"], False,
            "≤ 50", c["enqueue_p99_ms"] <= 50),
        Row("end to end HTTP→succeeded, jobs/s", c["e2e_rate"], a["drain_rate"], True,
            "≥ 1,500 (1-min soak not run)", c["e2e_rate"] >= 1500),
        Row("worker CPU per job, ms", c["worker_cpu_ms_per_job"], a["worker_cpu_ms_per_job"], False,
            f"(tuned arq here: {tuned['worker_cpu_ms_per_job']:.2f})"),
        Row("Redis commands per job", c["redis_cmds_per_job"], arq_cmds, False,
            f"< stock arq's {arq_cmds:.1f}", c["redis_cmds_per_job"] < arq_cmds),
        Row("Redis CPU per job, µs", c["redis_cpu_us_per_job"], a["redis_cpu_us_per_job"], False),
        Row("Redis bytes kept per job", c["redis_bytes_per_job"], a["redis_bytes_per_job"], False),
    ]  # fmt: skip


def fmt(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


def print_table(table: Sequence[Row]) -> None:
    header = ("metric", "conveyor", "stock arq", "gain ×", "DESIGN target", "met?")
    cells = [header] + [
        (r.metric, fmt(r.conveyor), fmt(r.arq), fmt(r.gain), r.target, {True: "yes", False: "NO", None: "-"}[r.met])
        for r in table
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for n, row in enumerate(cells):
        print(
            " | ".join(
                c.ljust(w) if i in (0, 4) else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            print("-+-".join("-" * w for w in widths))


def print_details(conv: Figures, stock: Figures, tuned: Figures, per_round: Sequence[Figures]) -> None:
    ttl_gb = conv["redis_bytes_per_job"] * 1500 * 86400 / 1e9
    print()
    print(
        f"tuned arq (max_jobs 100, poll 10 ms, uvloop): drain {fmt(tuned['drain_rate'])} jobs/s, "
        f"enqueue {fmt(tuned['enqueue_rate'])}/s, worker CPU {tuned['worker_cpu_ms_per_job']:.2f} ms/job"
    )
    print(f"conveyor POST rate while the worker drains (end-to-end phase): {fmt(conv['e2e_post_rate'])} req/s")
    print(
        f"CPU per request: gateway {conv['gateway_cpu_ms_per_request']:.2f} ms, "
        f"bench client {conv['client_cpu_ms_per_request']:.2f} ms (same cores)"
    )
    print(
        f"worker RSS after draining {fmt(conv['worker_rss_mb'])} MB; gateway RSS after each round: "
        + ", ".join(f"{r['gateway_rss_mb']:.0f}" for r in per_round)
        + " MB"
    )
    print(f"Redis bytes kept per job × 1,500 jobs/s × RESULT_TTL_S 86,400 s ≈ {ttl_gb:,.1f} GB")
    print(
        f"fair share: pickup p50 of one owner's job behind another owner's high-priority backlog "
        f"({FLOOD_SLEEP_S:g} s jobs, more than the worker's slots): {fmt(conv['flood_pickup_p50_ms'])} ms"
    )
    print("gain ×: > 1 means Conveyor is better (rates conveyor/arq; latencies and costs arq/conveyor).")
    print("pickup: Conveyor = ledger created_at → started_at (PostgreSQL clock, includes the insert's commit);")
    print("        stock arq = enqueue_job call → handler start (perf_counter, in-process, default poll 0.5 s).")
    print("drain/e2e: Conveyor rates come from ledger timestamps; arq's from the wall time of a burst worker.")
    print("end to end: the stock-arq column is its drain rate (arq has no HTTP or ledger).")
    print("Redis figures are server-wide counters: other clients of the same Redis inflate them.")


def print_rounds(stock: Sequence[Figures], tuned: Sequence[Figures], conv: Sequence[Figures]) -> None:
    """The spread behind the medians."""
    for n, (s, t, c) in enumerate(zip(stock, tuned, conv, strict=True), start=1):
        print(
            f"round {n}: conveyor drain {fmt(c['drain_rate'])}/s, e2e {fmt(c['e2e_rate'])}/s, "
            f"gateway {fmt(c['enqueue_rate'])} req/s, pickup p50 {fmt(c['pickup_p50_ms'])} ms; "
            f"stock arq drain {fmt(s['drain_rate'])}/s, pickup p50 {fmt(s['pickup_p50_ms'])} ms; "
            f"tuned arq drain {fmt(t['drain_rate'])}/s"
        )


def print_facts(cfg: Config, versions: dict[str, str], background: float, stack: Stack) -> None:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"machine: nproc {affinity} (cpu_count {os.cpu_count()}), {platform.platform()}")
    uvloop = package_version("uvloop") if uvloop_factory() else None
    print(
        f"python {platform.python_version()}, arq {package_version('arq')}, "
        f"uvloop {'yes ' + uvloop if uvloop else 'no'} (gateway, worker, bench client, tuned arq), "
        f"Redis {versions['redis']}, PostgreSQL {versions['postgresql']}"
    )
    print(
        f"sizes: {cfg.jobs} jobs/phase (stock arq drain {cfg.arq_jobs}), pickup samples {cfg.latency_samples} "
        f"(stock arq {cfg.arq_latency_samples}), {cfg.concurrency} in flight, medians of {cfg.rounds} rounds"
    )
    print(f"Redis background load from other clients: {background:.0f} commands/s")
    inherited = stack.inherited()
    print(f"Conveyor settings inherited from the environment: {', '.join(inherited) if inherited else 'none'}")


# --- main ---------------------------------------------------------------------------------------------


def measure(cfg: Config, stack: Stack) -> tuple[list[Figures], list[Figures], list[Figures]]:
    stock: list[Figures] = []
    tuned: list[Figures] = []
    conv: list[Figures] = []
    for n in range(1, cfg.rounds + 1):
        print(f"round {n}/{cfg.rounds}: stock arq …", flush=True)
        stock.append(run(stock_arq_round(cfg)))
        print(f"round {n}/{cfg.rounds}: tuned arq …", flush=True)
        tuned.append(run(tuned_arq_round(cfg), fast_loop=True))
        print(f"round {n}/{cfg.rounds}: conveyor …", flush=True)
        try:
            conv.append(run(conveyor_round(stack), fast_loop=True))
        finally:
            stack.stop_worker()
    return stock, tuned, conv


def bench(cfg: Config) -> None:
    with redis_pair(cfg) as claimed:
        measure_and_print(claimed)


def measure_and_print(cfg: Config) -> None:
    versions = run(check_services(cfg))
    background = run(background_redis_rate(cfg))
    run(flush_redis(cfg))
    started = time.perf_counter()
    with bench_database(cfg) as cfg_db, conveyor_stack(cfg_db) as stack:
        gateway = stack.start_gateway()
        run(wait_ready(f"http://127.0.0.1:{stack.api_port}/ready", gateway))
        stock, tuned, conv = measure(cfg_db, stack)
        logs = stack.log_summary()
    print()
    print_facts(cfg, versions, background, stack)
    print(f"targets: DESIGN.md, Performance targets; wall time {time.perf_counter() - started:.0f} s")
    print()
    s, t, c = medians(stock), medians(tuned), medians(conv)
    print_table(rows(c, s, t))
    print_details(c, s, t, conv)
    print_rounds(stock, tuned, conv)
    if logs:
        print(*logs, sep="\n")
    print()
    dataset_bench.main()  # dataset.analyze against a bare polars scan (BENCH_DATASET_MB, default 1024)


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    try:
        bench(cfg)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
