"""One tenant's large jobs cannot take the gateway's memory: lists, results and event streams stay bounded.

A payload of ~0.9 MiB of `[{},{},…]` (under MAX_BODY_BYTES) decodes to ~20 MB of Python objects. The
gateway runs as its own process here, so its resident memory (VmHWM, the peak, in /proc) is its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from shared.core import json
from support.helpers import TEST_JWT_SECRET, eventually, make_token
from support.stack import TEST_ENCRYPTION_KEY, Api, Conn, Services, StartWorker, free_port

# ~0.9 MiB of JSON: 300,000 empty objects.
EMPTY_OBJECTS = 300_000
JOBS = 30
CONCURRENT_LISTS = 3
ROUNDS = 3
STREAMS = 6
# Far above what the bounded gateway grows by (a few MB), far below the gigabytes of decoded rows.
GROWTH_BOUND_BYTES = 150 * 1024 * 1024
RESULT_MAX_BYTES = 256 * 1024
HEARTBEAT_S = 0.2


@dataclass(frozen=True)
class Gateway:
    """`python -m gateway` as a child process, and the client that speaks to it."""

    pid: int
    base: str
    session: aiohttp.ClientSession

    def headers(self, sub: str = "alice") -> dict[str, str]:
        return {"Authorization": f"Bearer {make_token(sub)}"}

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.session.get(self.base + path, headers=self.headers()) as resp:
            return resp.status, json.loads(await resp.read())

    def _status(self, field: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no {field} in /proc/{self.pid}/status")

    def rss(self) -> int:
        return self._status("VmRSS")

    def reset_peak(self) -> int:
        """Start measuring the peak from now (Linux: `5` in clear_refs resets VmHWM); returns the RSS."""
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        return self.rss()

    def peak(self) -> int:
        return self._status("VmHWM")


@pytest.fixture(scope="module")
async def gateway(services: Services, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "DATABASE_", "API_", "SSE_"))},
        "ENVIRONMENT": "development",
        "API_HOST": "127.0.0.1",
        "API_PORT": str(port),
        "REDIS_CACHE_URL": services.cache_url,
        "REDIS_JOBS_URL": services.jobs_url,
        "DATABASE_URL": services.database_url,
        "JWT_SECRET": TEST_JWT_SECRET,
        "ENCRYPTION_KEYS": TEST_ENCRYPTION_KEY,
        "STORAGE_DIR": services.storage_dir,
        "SYSTEM_ECHO_ENABLED": "true",
        "SSE_HEARTBEAT_S": str(HEARTBEAT_S),
        "RATE_LIMIT_PER_MINUTE": "100000",
        "LOG_LEVEL": "WARNING",
    }
    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", env=env, stdout=out, stderr=out)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:

            async def up() -> bool | None:
                if proc.returncode is not None:
                    raise AssertionError(f"the gateway exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(base + "/health") as resp:
                        return resp.status == 200 or None
                return None

            await eventually(up, within=30, interval=0.1)
            yield Gateway(proc.pid, base, session)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout=30)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _large_jobs(api: Api, pg: Conn, count: int) -> list[str]:
    """`count` system.echo jobs of alice, each with a ~0.9 MiB payload and the result echoing it, as a worker
    stored them before results had a cap (rows of an upgraded ledger): both are in every row."""
    ids = [(await api.submit("system.echo", {"data": None}))["id"] for _ in range(count)]
    await pg.execute(
        """
        WITH big AS (SELECT jsonb_agg('{}'::jsonb) AS data FROM generate_series(1, $2))
        UPDATE jobs SET payload = jsonb_build_object('data', big.data, 'sleep_s', 0, 'fail_times', 0),
                        result = jsonb_build_object('data', big.data, 'attempt', 1),
                        status = 'succeeded', attempts = 1, started_at = now(), finished_at = now()
        FROM big WHERE id = ANY($1::text[])
        """,
        ids,
        EMPTY_OBJECTS,
    )
    return ids


async def test_listing_jobs_with_large_payloads_and_results_keeps_the_gateway_small(
    gateway: Gateway, api: Api, pg: Conn
) -> None:
    ids = await _large_jobs(api, pg, JOBS)
    status, one = await gateway.get(f"/api/v1/jobs/{ids[0]}")
    assert status == 200
    assert len(one["payload"]["data"]) == EMPTY_OBJECTS, "one job is read whole, payload and result"
    assert await gateway.get("/api/v1/jobs?limit=1")  # warm up every code path once
    before = gateway.reset_peak()

    pages: list[tuple[int, Any]] = []
    for _ in range(ROUNDS):
        pages += await asyncio.gather(*(gateway.get("/api/v1/jobs?limit=50") for _ in range(CONCURRENT_LISTS)))
    growth = gateway.peak() - before

    assert growth < GROWTH_BOUND_BYTES, f"the gateway grew by {growth / 2**20:.0f} MiB listing {JOBS} jobs"
    for status, page in pages:
        assert status == 200
        assert sorted(item["id"] for item in page["items"]) == sorted(ids)
        for item in page["items"]:
            assert "payload" not in item, "a list item links to the job instead"
            assert "result" not in item
            assert item["links"]["self"] == f"/api/v1/jobs/{item['id']}"
            assert item["status"] == "succeeded"


async def test_event_streams_of_a_large_job_hold_little_and_keep_beating(gateway: Gateway, api: Api, pg: Conn) -> None:
    [job_id] = await _large_jobs(api, pg, 1)
    await pg.execute("UPDATE jobs SET status = 'queued', result = NULL, finished_at = NULL WHERE id = $1", job_id)
    before = gateway.reset_peak()

    async with contextlib.AsyncExitStack() as streams:
        readers = []
        for _ in range(STREAMS):  # one after another: what a stream holds while open is what adds up
            resp = await streams.enter_async_context(
                gateway.session.get(f"{gateway.base}/api/v1/jobs/{job_id}/events", headers=gateway.headers())
            )
            assert resp.status == 200
            reader = _Sse(resp)
            first = await reader.next_event()
            assert first[0] == "job"
            assert len(first[1]["payload"]["data"]) == EMPTY_OBJECTS
            readers.append(reader)
        for reader in readers:
            assert await reader.beats(3), "heartbeats keep coming while the job waits"
        growth = gateway.peak() - before

        async with gateway.session.post(
            f"{gateway.base}/api/v1/jobs/{job_id}/cancel", headers=gateway.headers()
        ) as resp:
            assert resp.status == 200
        for reader in readers:
            event, data = await reader.next_event()
            assert (event, data["status"]) == ("job", "cancelled")
            assert len(data["payload"]["data"]) == EMPTY_OBJECTS, "the change is sent with the whole job"
            assert await reader.next_event() == ("end", {"id": job_id, "status": "cancelled"})

    assert growth < GROWTH_BOUND_BYTES, f"{STREAMS} open streams grew the gateway by {growth / 2**20:.0f} MiB"


class _Sse:
    """Reads a text/event-stream frame by frame (an event's data line here is longer than aiohttp's line limit):
    its events, and the heartbeat comments in between."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.buffer = b""

    async def _frame(self) -> list[str]:
        while b"\n\n" not in self.buffer:
            chunk = await asyncio.wait_for(self.resp.content.readany(), timeout=10)
            if not chunk:
                raise AssertionError("the stream ended")
            self.buffer += chunk
        frame, self.buffer = self.buffer.split(b"\n\n", 1)
        return frame.decode().split("\n")

    async def next_event(self) -> tuple[str, Any]:
        while True:
            frame = await self._frame()
            if all(line.startswith(":") for line in frame):
                continue
            fields = dict(line.split(": ", 1) for line in frame if not line.startswith(":"))
            return fields["event"], json.loads(fields["data"])

    async def beats(self, count: int) -> bool:
        """Whether `count` more heartbeat comments arrive before any event."""
        for _ in range(count):
            frame = await self._frame()
            if not all(line.startswith(":") for line in frame):
                return False
        return True


async def test_a_result_over_the_cap_fails_the_job_and_is_stored_nowhere(
    api: Api, pg: Conn, jobs_redis: Redis, start_worker: StartWorker
) -> None:
    await start_worker("default")
    large = await api.submit("system.echo", {"data": "x" * (RESULT_MAX_BYTES + 1)})
    fits = await api.submit("system.echo", {"data": "x" * (RESULT_MAX_BYTES - 1024)})

    failed = await api.wait_status(large["id"], "failed", "succeeded")
    succeeded = await api.wait_status(fits["id"], "failed", "succeeded")

    assert failed["status"] == "failed"
    assert failed["attempts"] == 1, "the same result comes back every time: no retry"
    assert failed["result"] is None
    error = failed["error"]
    assert error["type"] == "ResultTooLarge"
    assert error["retryable"] is False
    assert f"over the limit of {RESULT_MAX_BYTES} bytes" in error["message"]
    assert "RESULT_MAX_BYTES" in error["message"]
    assert "artifact" in error["message"]
    assert await pg.fetchval("SELECT result FROM jobs WHERE id = $1", large["id"]) is None
    kept = await jobs_redis.get(f"arq:result:{large['id']}")
    assert kept is not None
    assert json.loads(kept)["r"] == {"status": "failed", "error": error}, "arq's result record holds no result"
    assert succeeded["status"] == "succeeded"
    assert succeeded["result"]["data"] == fits["payload"]["data"]


async def test_a_job_keeps_the_errors_of_its_last_attempts_only(api: Api, pg: Conn, start_worker: StartWorker) -> None:
    job = await api.submit("system.echo", {"fail_times": 1}, max_attempts=1, delay_s=1)
    history = [{"type": "Boom", "message": f"attempt {n}", "retryable": True, "attempt": n} for n in range(150)]
    await pg.execute("UPDATE jobs SET error_history = $2::jsonb WHERE id = $1", job["id"], json.dumps(history).decode())
    await start_worker("default")

    failed = await api.wait_status(job["id"], "failed", "succeeded")

    assert failed["status"] == "failed"
    assert len(failed["errors"]) == 100, "retry after retry, a job's history stays bounded"
    assert [e["message"] for e in failed["errors"][:2]] == ["attempt 51", "attempt 52"], "the oldest are dropped"
    assert failed["errors"][-1]["message"] == failed["error"]["message"]
