"""The real processes, started the way `make run` starts them (subprocesses, real ports), driven over HTTP."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from shared.core import json
from support.helpers import TEST_JWT_SECRET, eventually, make_token
from support.stack import Conn, Services, SmtpSink, free_port


def _children(pid: int) -> set[int]:
    """Every descendant of `pid` (Linux /proc)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with_children = (task / "children").read_text().split()
        for child in map(int, with_children):
            found |= {child, *_children(child)}
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_conveyor_run_serves_jobs_end_to_end_and_stops_cleanly(
    services: Services, pg: Conn, jobs_redis: Redis, smtp: SmtpSink, tmp_path: Path
) -> None:
    api_port = free_port()
    env = {
        **os.environ,
        "REDIS_CACHE_URL": services.cache_url, "REDIS_JOBS_URL": services.jobs_url,
        "DATABASE_URL": services.database_url, "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp.port),
        "API_PORT": str(api_port), "JWT_SECRET": TEST_JWT_SECRET, "WORKER_METRICS_PORT": "0",
        "LOG_LEVEL": "INFO", "SHUTDOWN_GRACE_S": "5",
    }  # fmt: skip
    conveyor = Path(sys.executable).with_name("conveyor")
    with (tmp_path / "out.log").open("wb") as out:
        proc = await asyncio.create_subprocess_exec(conveyor, "run", env=env, stdout=out, stderr=out, cwd=tmp_path)
    base = f"http://127.0.0.1:{api_port}"
    headers = {"Authorization": f"Bearer {make_token('alice')}"}
    try:
        async with aiohttp.ClientSession() as http:

            async def ready() -> bool | None:
                try:
                    async with http.get(f"{base}/ready") as resp:
                        return True if resp.status == 200 else None
                except aiohttp.ClientError:
                    return None

            await eventually(ready, within=60, interval=0.2)
            async with http.post(
                f"{base}/api/v1/jobs",
                json={"type": "email.send", "payload": {"to": ["ann@example.com"], "subject": "Hi", "text": "x"}},
                headers=headers,
            ) as resp:
                assert resp.status == 202
                job_id = (await resp.json())["id"]

            # The event stream (gateway process) follows the job the worker process runs, to its end.
            statuses: list[str] = []
            async with http.get(f"{base}/api/v1/jobs/{job_id}/events", headers=headers) as stream:
                async for raw in stream.content:
                    line = raw.decode()
                    if line.startswith("data: ") and '"status"' in line:
                        statuses.append(json.loads(line.removeprefix("data: "))["status"])
                    if line.startswith("event: end"):
                        break
            assert statuses[-1] == "succeeded"
        assert len(smtp.messages) == 1
        children = _children(proc.pid)
        assert len(children) >= 4, "gateway + default, heavy and scheduler workers"

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=40) == 0
        assert not [pid for pid in children if _alive(pid)], "no process may outlive `conveyor run`"
        logs = (tmp_path / "out.log").read_text(errors="replace")
        assert '"event":"job.succeeded"' in logs
        for secret in (TEST_JWT_SECRET, headers["Authorization"].split()[1], "ann@example.com"):
            assert secret not in logs, "secrets and payload data never reach a log line"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        print((tmp_path / "out.log").read_text(errors="replace")[-4000:])  # noqa: T201 - shown only on failure
