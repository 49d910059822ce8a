"""What every bench phase shares: its configuration, one event loop per phase (stopped cleanly by SIGTERM),
closed-loop load, percentiles, and process and Redis counters."""

from __future__ import annotations

import asyncio
import importlib.metadata
import itertools
import math
import os
import secrets
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis

T = TypeVar("T")
Figures = dict[str, float]

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
    e2e_s: float = 60.0
    soak_s: float = 60.0
    batch_size: int = 1000
    batches: int = 8
    batch_concurrency: int = 4
    scale_workers: tuple[int, ...] = (1, 2, 4)
    database_url: str = ""
    cache_db: int = 12  # the jobs database is the next one; see `services.redis_pair`
    cache_base: str = ""  # the bench's own Redis for the cache role (`private_redis`); "" = the shared one
    jobs_redis: str = "shared"  # "own": the jobs on the bench's own server (`private_redis`), not `redis_base`
    jwt_secret: str = field(default_factory=lambda: secrets.token_hex(32))

    @property
    def cache_url(self) -> str:
        if self.cache_base:
            return with_path(self.cache_base, "/0")
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


# --- event loops --------------------------------------------------------------------------------------


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


# --- figures ------------------------------------------------------------------------------------------


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


# --- load ---------------------------------------------------------------------------------------------


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


async def timed_loop(seconds: float, concurrency: int, call: Callable[[int], Awaitable[bool]]) -> Load:
    """Calls with at most `concurrency` in flight for `seconds`; each lane starts its next call when one ends."""
    counter = itertools.count()
    latencies: list[float] = []
    sent = ok = 0
    started = time.perf_counter()
    deadline = started + seconds

    async def lane() -> None:
        nonlocal sent, ok
        while time.perf_counter() < deadline:
            sent += 1
            t0 = time.perf_counter()
            if await call(next(counter)):
                ok += 1
                latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return Load(sent, ok, time.perf_counter() - started, latencies)


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
