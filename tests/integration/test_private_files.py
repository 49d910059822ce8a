"""What Conveyor writes is its own account's alone: stored files, caught mail, the local servers and their secrets.

A machine running `conveyor run` has other accounts; each of them can reach 127.0.0.1 and read any file the
umask leaves readable.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from pathlib import Path

import aiohttp
import aiosmtplib
import asyncpg
import pytest
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError

from devstack.embedded import fallback_home
from shared.core.settings import StorageConfig
from support.helpers import make_token
from support.stack import Services, free_port, gateway_settings, running_gateway
from support.supervisor import clean_env, conveyor_run


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _assert_private(folder: Path) -> None:
    """`folder` and every directory below it 0700, every file 0600."""
    assert _mode(folder) == 0o700, folder
    for path in folder.rglob("*"):
        assert _mode(path) == (0o700 if path.is_dir() else 0o600), path


def _environ(pid: int) -> dict[str, str]:
    """The environment process `pid` was started with (Linux /proc)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().partition("=")[::2] for item in raw if item)


async def test_uploads_are_stored_readable_by_the_service_account_alone(services: Services, tmp_path: Path) -> None:
    folder = tmp_path / "storage"
    previous = os.umask(0o022)  # the common default: whatever the operator's umask, tenants' files stay private
    try:
        async with running_gateway(gateway_settings(services, storage=StorageConfig(dir=folder))) as api:
            status, body, _ = await api.request("POST", "/api/v1/uploads", data=b"city,temp\nOslo,12\n")
    finally:
        os.umask(previous)
    assert status == 201, body
    (upload,) = _files(folder)
    assert upload.read_bytes() == b"city,temp\nOslo,12\n"
    _assert_private(folder)


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_a_local_run_keeps_its_servers_and_files_from_other_accounts(tmp_path: Path) -> None:
    api_port = free_port()
    env = clean_env(API_PORT=str(api_port), LOG_FORMAT="json", STORAGE_DIR="var/storage")
    env.pop("ENVIRONMENT", None)
    var = tmp_path / "var"
    try:
        async with conveyor_run("--only", "gateway", "default", "--workers", "1", env=env, cwd=tmp_path) as run:
            banner = await run.banner(within=180)
            gateway = run.pid("gateway")
            assert gateway is not None
            children = _environ(gateway)
            passwords = [(var / name).read_text().strip() for name in ("pg.password", "redis.password")]
            pg_password, redis_password = passwords

            # Only the URLs handed to the children get in.
            assert children["ENVIRONMENT"] == "development", "an unset ENVIRONMENT is a local development run"
            database_url = children["DATABASE_URL"]
            assert f":{pg_password}@" in database_url
            conn = await asyncpg.connect(database_url)
            assert await conn.fetchval("SELECT count(*) FROM jobs") == 0
            await conn.close()
            with pytest.raises(asyncpg.InvalidPasswordError):
                await asyncpg.connect(re.sub(r":[^:@/]+@", "@", database_url), password="")
            for name in ("REDIS_CACHE_URL", "REDIS_JOBS_URL"):
                assert f":{redis_password}@" in children[name]
                client = Redis.from_url(children[name])
                assert await client.ping()
                await client.aclose()
            stranger = Redis.from_url(children["REDIS_JOBS_URL"].replace(f":{redis_password}@", ""))
            with pytest.raises(AuthenticationError):
                await stranger.publish("notifications", b"{}")  # a fake notification for users' streams
            await stranger.aclose()

            # An upload through the real gateway, a message through the real catcher.
            headers = {"Authorization": f"Bearer {make_token('alice')}"}
            async with (
                aiohttp.ClientSession(headers=headers) as http,
                http.post(f"http://127.0.0.1:{api_port}/api/v1/uploads", data=b"private\n") as resp,
            ):
                assert resp.status == 201, await resp.text()
            smtp = re.search(r"smtp://127\.0\.0\.1:(\d+)", banner)
            assert smtp, banner
            await aiosmtplib.send(
                "Subject: reset your password\r\n\r\nhttps://example.com/reset?token=secret\r\n",
                sender="noreply@example.com", recipients=["alice@example.com"],
                hostname="127.0.0.1", port=int(smtp[1]),
            )  # fmt: skip
            assert len(_files(var / "mail")) == 1
            assert len(_files(var / "storage" / "uploads")) == 1
            output = run.text()
        _assert_private(var / "storage")
        _assert_private(var / "mail")
        _assert_private(var / "redis")  # the append-only file holds every job's payload
        for name in ("embedded.json", "embedded.log", "embedded.lock", "pg.password", "redis.password"):
            assert _mode(var / name) == 0o600, name
        assert _mode(var) == 0o700
        logs = output + (var / "embedded.log").read_text()
        for password in passwords:
            assert password not in banner
            assert password not in logs
    finally:
        shutil.rmtree(fallback_home(tmp_path).parent, ignore_errors=True)
