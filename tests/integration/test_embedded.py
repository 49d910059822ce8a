"""The embedded defaults of `make run`: a private Redis, PostgreSQL and mail catcher that keep their data."""

from __future__ import annotations

import shutil
from email import message_from_bytes
from pathlib import Path

import aiosmtplib
import asyncpg
import pytest
from redis.asyncio import Redis

from shared.embedded import EmbeddedPostgres, EmbeddedRedis, fallback_home
from shared.mailcatcher import catch_mail


async def test_embedded_redis_keeps_data_between_runs(tmp_path: Path) -> None:
    async with EmbeddedRedis(tmp_path / "redis") as server:
        assert server.port not in (6379, 0)
        client = Redis.from_url(server.url)
        await client.set("kept", b"yes")
        await client.aclose()

    async with EmbeddedRedis(tmp_path / "redis") as again:
        client = Redis.from_url(again.url)
        assert await client.get("kept") == b"yes"
        await client.aclose()


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_embedded_postgres_initialises_once_and_keeps_data(tmp_path: Path) -> None:
    try:
        async with EmbeddedPostgres(tmp_path / "pg", project_dir=tmp_path) as server:
            assert server.port != 5432
            conn = await asyncpg.connect(server.url)
            await conn.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('yes')")
            await conn.close()

        async with EmbeddedPostgres(tmp_path / "pg", project_dir=tmp_path) as again:
            conn = await asyncpg.connect(again.url)
            assert await conn.fetchval("SELECT v FROM kept") == "yes"
            await conn.close()
    finally:
        shutil.rmtree(fallback_home(tmp_path), ignore_errors=True)


async def test_mail_catcher_keeps_each_message_as_an_eml_file(tmp_path: Path) -> None:
    async with catch_mail(tmp_path / "mail") as port:
        await aiosmtplib.send(
            "Subject: hello\r\n\r\nbody\r\n",
            sender="a@example.com", recipients=["b@example.com"], hostname="127.0.0.1", port=port,
        )  # fmt: skip

    files = list((tmp_path / "mail").glob("*.eml"))
    assert len(files) == 1
    assert message_from_bytes(files[0].read_bytes())["Subject"] == "hello"
