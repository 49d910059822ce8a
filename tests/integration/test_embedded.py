"""The embedded defaults of `make run`: a private Redis, PostgreSQL and mail catcher that keep their data,
each closed to the other accounts of the machine."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import tempfile
from email import message_from_bytes
from pathlib import Path

import aiosmtplib
import asyncpg
import pytest
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError

from devstack.embedded import EmbeddedPostgres, EmbeddedRedis, fallback_home, registry
from devstack.mailcatcher import catch_mail


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def _command_line(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")


def _assert_untouched(planted: Path, theirs: Path) -> None:
    assert list(theirs.iterdir()) == [], "nothing was created through the link"
    assert _mode(theirs) == 0o777, "nor was its target chmodded"
    assert os.readlink(planted) == str(theirs), "the link itself is left alone"


def _assert_fresh_and_private(home: Path, theirs: Path) -> None:
    assert not home.resolve().is_relative_to(theirs.resolve())
    parent = os.lstat(home.parent)
    assert stat.S_ISDIR(parent.st_mode), "a real directory, not a link"
    assert parent.st_uid == 0
    assert os.lstat(home).st_uid == pwd.getpwnam("postgres").pw_uid
    assert _mode(home) == 0o700


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


async def test_embedded_redis_answers_only_with_its_password_which_no_other_account_can_read(tmp_path: Path) -> None:
    async with EmbeddedRedis(tmp_path / "redis") as server:
        stranger = Redis.from_url(f"redis://127.0.0.1:{server.port}")
        with pytest.raises(AuthenticationError, match=r"NOAUTH|Authentication required"):
            await stranger.set("planted", b"fake notification")
        await stranger.aclose()
        client = Redis.from_url(server.url)
        assert await client.set("kept", b"yes")
        await client.aclose()

        password = (tmp_path / "redis.password").read_text().strip()
        assert f":{password}@" in server.url
        assert _mode(tmp_path / "redis.password") == 0o600
        assert server.pid is not None
        assert password not in _command_line(server.pid), "every account can read a command line"
        for path in _files_under(tmp_path / "redis"):  # its append-only file holds every job payload
            assert _mode(path) == 0o600, path


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_embedded_postgres_admits_only_its_stored_password(tmp_path: Path) -> None:
    try:
        async with EmbeddedPostgres(tmp_path / "pg", project_dir=tmp_path) as server:
            for attempt in ("", "guessed"):  # "trust" let anyone in, as superuser
                with pytest.raises(asyncpg.InvalidPasswordError):
                    await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{server.port}/conveyor", password=attempt)
            conn = await asyncpg.connect(server.url)
            assert await conn.fetchval("SELECT current_user") == "postgres"
            await conn.close()
            password = (tmp_path / "pg.password").read_text().strip()
            assert f":{password}@" in server.url
            assert _mode(tmp_path / "pg.password") == 0o600
            assert server.log_path is not None
            assert password not in server.log_path.read_text()

        async with EmbeddedPostgres(tmp_path / "pg", project_dir=tmp_path) as again:
            assert again.url == server.url.replace(str(server.port), str(again.port)), "the password is kept"
    finally:
        shutil.rmtree(fallback_home(tmp_path).parent, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.skipif(os.geteuid() != 0, reason="the /var/tmp fallback is taken only when running as root")
async def test_a_link_planted_at_the_postgres_fallback_path_is_never_followed(tmp_path: Path) -> None:
    # Another account creates the fallback's directory first, as a link to a directory of its own: root would
    # then create the cluster there and hand it to user postgres (or chmod/chown whatever the link names).
    nobody = pwd.getpwnam("nobody")
    theirs = Path(tempfile.mkdtemp(prefix="theirs-", dir="/var/tmp"))
    os.chown(theirs, nobody.pw_uid, nobody.pw_gid)
    os.chmod(theirs, 0o777)  # noqa: S103 - what an attacker leaves open
    planted = fallback_home(tmp_path).parent
    shutil.rmtree(planted, ignore_errors=True)
    planted.symlink_to(theirs)
    os.lchown(planted, nobody.pw_uid, nobody.pw_gid)
    homes: list[Path] = []
    try:
        async with EmbeddedPostgres(tmp_path / "pg", project_dir=tmp_path) as server:
            assert server.home is not None
            homes.append(server.home)
            assert not server.home.is_relative_to(tmp_path), "the premise: user postgres cannot reach tmp_path"
            conn = await asyncpg.connect(server.url)
            await conn.execute("CREATE TABLE kept (v text)")
            await conn.close()

        _assert_untouched(planted, theirs)
        home = homes[0]
        _assert_fresh_and_private(home, theirs)

        async with EmbeddedPostgres(tmp_path / "pg", project_dir=tmp_path) as again:
            assert again.home == home, "later runs find the cluster in the fresh directory again"
            conn = await asyncpg.connect(again.url)
            assert await conn.fetchval("SELECT count(*) FROM kept") == 0
            await conn.close()
    finally:
        for home in homes:
            shutil.rmtree(home.parent, ignore_errors=True)
        planted.unlink(missing_ok=True)
        shutil.rmtree(theirs, ignore_errors=True)


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
    assert (_mode(files[0]), _mode(tmp_path / "mail")) == (0o600, 0o700), "caught mail is read by its owner alone"


async def test_a_var_folder_left_open_by_an_earlier_version_is_made_private(tmp_path: Path) -> None:
    var = tmp_path / "var"
    (var / "mail").mkdir(parents=True)
    (var / "mail" / "old.eml").write_bytes(b"Subject: left readable\r\n\r\n")
    for path in (var, var / "mail"):
        path.chmod(0o755)
    (tmp_path / "elsewhere").mkdir(mode=0o755)
    (var / "storage").symlink_to(tmp_path / "elsewhere")  # a link is never followed, nor changed

    async with registry.locked(var):
        pass

    assert stat.S_IMODE((var / "mail").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "elsewhere").stat().st_mode) == 0o755
    # root keeps var/ itself traversable: its PostgreSQL cluster may live in var/pg for `postgres`
    assert stat.S_IMODE(var.stat().st_mode) == (0o755 if os.geteuid() == 0 else 0o700)
