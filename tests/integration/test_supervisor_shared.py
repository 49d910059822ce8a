"""`make run-api` and `make run-worker` side by side: one embedded Redis and PostgreSQL per directory, shared."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from shared.embedded import fallback_home
from support.helpers import eventually
from support.stack import Services, SmtpSink, free_port
from support.supervisor import clean_env, conveyor_run


def _url(banner: str, label: str) -> str:
    match = re.search(rf"^\s+{label}\s+(\S+) \(embedded", banner, re.MULTILINE)
    assert match, banner
    return match[1]


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

        run.proc.send_signal(signal.SIGKILL)
        await run.proc.wait()

        async def stopped_and_forgotten() -> bool | None:
            return True if not await _redis_answers(redis_url) and _registry(tmp_path / "var") == {} else None

        await eventually(stopped_and_forgotten, within=30)
