"""`make run-api` and `make run-worker` side by side: one embedded Redis and PostgreSQL per directory, shared."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import shutil
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from devstack.embedded import EmbeddedPostgres, fallback_home
from devstack.embedded.registry import shared_server
from support.helpers import eventually, make_token
from support.stack import Services, SmtpSink, free_port
from support.supervisor import Run, alive, clean_env, conveyor_run, embedded_url


def _url(banner: str, label: str) -> str:
    return embedded_url(banner, label)


async def _redis_answers(url: str) -> bool:
    client = Redis.from_url(url, socket_connect_timeout=1)
    try:
        return bool(await client.ping())
    except (OSError, RedisConnectionError):
        return False
    finally:
        await client.aclose()


async def _postgres_answers(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=2)
    except (OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


def _registry(var: Path) -> dict[str, object]:
    path = var / "embedded.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    assert isinstance(data, dict)
    return data


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_two_runs_in_one_directory_share_the_embedded_servers_until_the_last_stops(
    smtp: SmtpSink, tmp_path: Path
) -> None:
    env = clean_env(SMTP_HOST="127.0.0.1", SMTP_PORT=str(smtp.port), API_PORT=str(free_port()), LOG_FORMAT="json")
    try:
        async with (
            conveyor_run("--only", "gateway", env=env, cwd=tmp_path, out=tmp_path / "api.log") as api,
            conveyor_run(
                "--only", "default", "--workers", "1", env=env, cwd=tmp_path, out=tmp_path / "w.log"
            ) as worker,
        ):
            api_banner, worker_banner = await asyncio.gather(api.banner(within=180), worker.banner(within=180))
            redis_url, pg_url = _url(api_banner, "redis"), _url(api_banner, "postgres")
            assert (_url(worker_banner, "redis"), _url(worker_banner, "postgres")) == (redis_url, pg_url)
            assert "shared with another `conveyor run` here" in api_banner + worker_banner

            assert await api.stop() == 0
            assert await _redis_answers(redis_url), "the worker's run still uses them"
            assert await _postgres_answers(pg_url)
            assert worker.proc.returncode is None

            assert await worker.stop() == 0
            assert not await _redis_answers(redis_url), "the last user stops them on its way out"
            assert not await _postgres_answers(pg_url)
            assert _registry(tmp_path / "var") == {}
    finally:
        shutil.rmtree(fallback_home(tmp_path), ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_sigkilled_last_user_does_not_keep_the_embedded_server(
    services: Services, smtp: SmtpSink, tmp_path: Path
) -> None:
    env = clean_env(
        DATABASE_URL=services.database_url, SMTP_HOST="127.0.0.1", SMTP_PORT=str(smtp.port),
        API_PORT=str(free_port()), LOG_FORMAT="json",
    )  # fmt: skip
    async with conveyor_run("--only", "gateway", env=env, cwd=tmp_path) as run:
        redis_url = _url(await run.banner(), "redis")
        assert await _redis_answers(redis_url)
        gateway = run.pid("gateway")
        assert gateway is not None

        run.proc.send_signal(signal.SIGKILL)
        await run.proc.wait()

        await eventually(_exited([gateway]), within=30)  # the orphan stops too (parent-death signal)
        await eventually(_stopped_and_forgotten(redis_url, tmp_path / "var"), within=30)


def _exited(pids: list[int], while_running: str | None = None) -> Callable[[], Awaitable[bool | None]]:
    """A check for eventually(): every process in `pids` has exited; until then the Redis at `while_running`
    (if given) answers: it is asked first, so an answer means it was up while a process still ran."""

    async def check() -> bool | None:
        answers = await _redis_answers(while_running) if while_running else True
        running = [pid for pid in pids if alive(pid)]
        assert answers or not running, f"the embedded server stopped while {running} still ran"
        return None if running else True

    return check


def _stopped_and_forgotten(redis_url: str, var: Path) -> Callable[[], Awaitable[bool | None]]:
    async def check() -> bool | None:
        return True if not await _redis_answers(redis_url) and _registry(var) == {} else None

    return check


async def _submit_and_wait_sleeping(api_port: int, payload: dict[str, object]) -> str:
    """Submit a `system.echo` job; its id once it has reported progress (its handler is well under way)."""
    base = f"http://127.0.0.1:{api_port}/api/v1/jobs"
    headers = {"Authorization": f"Bearer {make_token('alice')}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.post(base, json={"type": "system.echo", "payload": payload}) as resp:
            assert resp.status == 202
            job_id = str((await resp.json())["id"])

        async def running() -> bool | None:
            async with http.get(f"{base}/{job_id}") as resp:
                job = await resp.json()
                return True if job["status"] == "running" and (job["progress"] or {}).get("percent") else None

        await eventually(running, within=30)
    return job_id


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_a_sigkilled_run_lets_its_children_finish_their_work_before_the_embedded_servers_stop(
    smtp: SmtpSink, tmp_path: Path
) -> None:
    api_port = free_port()
    env = clean_env(SMTP_HOST="127.0.0.1", SMTP_PORT=str(smtp.port), API_PORT=str(api_port), LOG_FORMAT="json")
    try:
        async with conveyor_run("--only", "gateway", "default", "--workers", "1", env=env, cwd=tmp_path) as run:
            banner = await run.banner(within=180)
            redis_url, pg_url = _url(banner, "redis"), _url(banner, "postgres")
            children = _pids(run, "gateway", "default-1")
            job_id = await _submit_and_wait_sleeping(api_port, {"sleep_s": 2, "data": "kept"})

            run.proc.send_signal(signal.SIGKILL)  # the children get SIGTERM: a graceful stop on their own
            await run.proc.wait()

            await eventually(_exited(children, while_running=redis_url), within=60)
            await eventually(_stopped_and_forgotten(redis_url, tmp_path / "var"), within=60)
            assert not await _postgres_answers(pg_url)

        # The ledger as the draining worker left it: the same cluster, started again.
        async with EmbeddedPostgres(tmp_path / "var" / "pg", project_dir=tmp_path) as ledger:
            conn = await asyncpg.connect(ledger.url)
            try:
                status = await conn.fetchval("SELECT status FROM jobs WHERE id = $1", job_id)
            finally:
                await conn.close()
        assert status == "succeeded", "the draining worker finished the job and recorded it"
    finally:
        shutil.rmtree(fallback_home(tmp_path), ignore_errors=True)


def _pids(run: Run, *children: str) -> list[int]:
    pids = [run.pid(child) for child in children]
    assert None not in pids, pids
    return [pid for pid in pids if pid is not None]


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_an_embedded_server_that_fails_unexpectedly_is_reported_at_once(
    services: Services, smtp: SmtpSink, tmp_path: Path
) -> None:
    # A cluster whose PG_VERSION is not text: reading it raises UnicodeDecodeError, not an EmbeddedServerError.
    for pgdata in (tmp_path / "var" / "pg" / "data", fallback_home(tmp_path) / "data"):
        pgdata.mkdir(parents=True, exist_ok=True)
        (pgdata / "PG_VERSION").write_bytes(b"\xff\xfe")
    env = clean_env(
        REDIS_CACHE_URL=services.cache_url, REDIS_JOBS_URL=services.jobs_url, SMTP_HOST="127.0.0.1",
        SMTP_PORT=str(smtp.port), API_PORT=str(free_port()), LOG_FORMAT="json",
    )  # fmt: skip
    try:
        async with conveyor_run("--only", "gateway", env=env, cwd=tmp_path) as run:
            assert await asyncio.wait_for(run.proc.wait(), timeout=90) == 1
            text = run.text()
    finally:
        shutil.rmtree(fallback_home(tmp_path), ignore_errors=True)

    assert "conveyor: the embedded postgres failed to start: UnicodeDecodeError: " in text
    keeper_log = (tmp_path / "var" / "embedded.log").read_text()
    assert keeper_log.count('"embedded.start_failed"') == 1, "one keeper, not one after another"
    assert "Traceback" not in text


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_stop_is_heard_while_another_run_holds_the_registry_lock(
    services: Services, smtp: SmtpSink, tmp_path: Path
) -> None:
    var = tmp_path / "var"
    var.mkdir()
    lock_path = var / "embedded.lock"
    env = clean_env(
        DATABASE_URL=services.database_url, SMTP_HOST="127.0.0.1", SMTP_PORT=str(smtp.port),
        API_PORT=str(free_port()), LOG_FORMAT="json",
    )  # fmt: skip
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another `conveyor run` in the middle of a change
        async with conveyor_run("--only", "gateway", env=env, cwd=tmp_path) as run:

            async def waiting_for_the_lock() -> bool | None:
                return True if _holds_open(run.proc.pid, lock_path) else None

            await eventually(waiting_for_the_lock, within=30)
            run.proc.send_signal(signal.SIGTERM)

            async def heard() -> bool | None:
                return True if run.events("supervisor.stop_requested") else None

            await eventually(heard, within=30)  # while the lock is still held
            fcntl.flock(lock, fcntl.LOCK_UN)
            assert await asyncio.wait_for(run.proc.wait(), timeout=30) == 0
            assert "Conveyor is running" not in run.text()
    assert _registry(var) == {}, "it stopped before starting anything"


def _holds_open(pid: int, path: Path) -> bool:
    """Process `pid` has `path` open (Linux /proc)."""
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd) == str(path):
                return True
        except OSError:
            continue  # closed meanwhile
    return False


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_the_last_user_stops_waiting_for_the_servers_once_another_joins(
    services: Services, smtp: SmtpSink, tmp_path: Path
) -> None:
    var = tmp_path / "var"
    env = clean_env(
        DATABASE_URL=services.database_url, SMTP_HOST="127.0.0.1", SMTP_PORT=str(smtp.port),
        API_PORT=str(free_port()), LOG_FORMAT="json",
    )  # fmt: skip
    async with conveyor_run("--only", "gateway", env=env, cwd=tmp_path) as run:
        redis_url = _url(await run.banner(), "redis")
        entry = _registry(var)["redis"]
        assert isinstance(entry, dict)
        keeper = int(entry["keeper"][0])
        with (var / "embedded.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # so the keeper is not held still while it holds the lock
            os.kill(keeper, signal.SIGSTOP)  # held still: it cannot yet notice that the last user left
        try:
            run.proc.send_signal(signal.SIGTERM)

            async def left() -> bool | None:
                entry = _registry(var)["redis"]
                return True if isinstance(entry, dict) and entry["users"] == [] else None

            await eventually(left, within=60)  # the run left, and waits for the server to stop
            async with shared_server("redis", var, tmp_path) as again:  # another user joins meanwhile
                os.kill(keeper, signal.SIGCONT)
                assert again.url == redis_url
                # The server keeps running for the newcomer: the run has nothing left to wait for.
                assert await asyncio.wait_for(run.proc.wait(), timeout=20) == 0
                assert await _redis_answers(redis_url)
        finally:
            os.kill(keeper, signal.SIGCONT)
    assert not await _redis_answers(redis_url), "the newcomer was the last user"
