"""`conveyor run` as a newcomer meets it: signals, ports, start-up, log format, a crash loop (real processes)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import pty
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from redis.asyncio import Redis

from devstack.supervisor import RestartPolicy
from devstack.supervisor.children import Child
from devstack.supervisor.options import ChildSpec
from devstack.supervisor.stopping import StopRequest
from devstack.supervisor.supervise import _stop_in_order
from support.helpers import eventually, make_token
from support.stack import Conn, Services, SmtpSink, free_port
from support.supervisor import CONVEYOR, alive, conveyor_run, get_json, services_env


@contextlib.contextmanager
def listening(port: int) -> Iterator[int]:
    """Something listening on 127.0.0.1:`port` (0: any); if another program holds it already, that one is."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or port == 0:
                raise
        yield int(sock.getsockname()[1]) if port == 0 else port


@contextlib.asynccontextmanager
async def another_gateway() -> AsyncIterator[int]:
    """A server on a free port that answers 200 on /health, as a second checkout's gateway does; its port."""

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/health", health)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_two_sigterms_to_the_process_group_still_stop_gracefully(
    services: Services, pg: Conn, jobs_redis: Redis, smtp: SmtpSink, tmp_path: Path
) -> None:
    api_port = free_port()
    env = services_env(services, smtp.port, api_port, SHUTDOWN_GRACE_S="15", LOG_FORMAT="json")
    async with conveyor_run(
        "--only", "gateway", "default", "--workers", "1", env=env, cwd=tmp_path, new_session=True
    ) as run:
        await run.banner()
        headers = {"Authorization": f"Bearer {make_token('alice')}"}
        base = f"http://127.0.0.1:{api_port}/api/v1/jobs"
        async with aiohttp.ClientSession(headers=headers) as http:
            body = {"type": "system.echo", "payload": {"sleep_s": 3, "data": "kept"}}
            async with http.post(base, json=body) as resp:
                assert resp.status == 202
                job_id = (await resp.json())["id"]

            async def running() -> bool | None:
                async with http.get(f"{base}/{job_id}") as resp:
                    return True if (await resp.json())["status"] == "running" else None

            await eventually(running, within=20)

        # What `kill -- -PGID` does to `make run`: make and the supervisor get it, and make passes it on.
        os.killpg(run.proc.pid, signal.SIGTERM)
        os.killpg(run.proc.pid, signal.SIGTERM)

        assert await run.stop() == 0
        assert await pg.fetchval("SELECT status FROM jobs WHERE id = $1", job_id) == "succeeded"
        assert run.events("supervisor.child_killed") == []
        assert run.events("supervisor.forcing_stop") == []


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_taken_default_metrics_port_does_not_stop_the_start_and_the_banner_shows_real_ports(
    services: Services, pg: Conn, jobs_redis: Redis, smtp: SmtpSink, tmp_path: Path
) -> None:
    api_port = free_port()
    with listening(9101):  # a second instance, or anything else, on the worker's old fixed port
        async with conveyor_run(env=services_env(services, smtp.port, api_port), cwd=tmp_path) as run:
            banner = await run.banner()
            workers = run.workers(banner)

            assert [w.name for w in workers] == ["default-1", "default-2", "heavy-1", "scheduler-1"]
            assert 9101 not in {w.metrics_port for w in workers}
            assert len({w.metrics_port for w in workers}) == 4
            for worker in workers:  # announced only once up: each answers at once
                status, health = await get_json(f"http://127.0.0.1:{worker.metrics_port}/health")
                assert status == 200
                assert health["queue"] == worker.name.rpartition("-")[0]
                assert health["taking_jobs"] is True
            assert f"http://127.0.0.1:{api_port}" in banner
            assert await run.stop() == 0


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("process", "setting", "error"),
    [
        ("default", "WORKER_METRICS_PORT", "workers: cannot serve /health and /metrics on 127.0.0.1:{port}: "),
        ("gateway", "API_PORT", "gateway: cannot listen on 127.0.0.1:{port}: "),
    ],
)
async def test_a_configured_port_that_is_taken_fails_with_one_clear_line(
    services: Services,
    pg: Conn,
    jobs_redis: Redis,
    smtp: SmtpSink,
    tmp_path: Path,
    process: str,
    setting: str,
    error: str,
) -> None:
    async with contextlib.AsyncExitStack() as holder:
        # The gateway's port is held by someone else's gateway: its /health answers, ours never bound.
        taken = (
            await holder.enter_async_context(another_gateway())
            if process == "gateway"
            else holder.enter_context(listening(0))
        )
        env = {**services_env(services, smtp.port, free_port()), setting: str(taken)}
        async with conveyor_run("--only", process, "--workers", "1", env=env, cwd=tmp_path) as run:
            assert await asyncio.wait_for(run.proc.wait(), timeout=60) == 1
            text = run.text()

    child = "default-1" if process == "default" else "gateway"
    assert error.format(port=taken) + "address already in use" in text
    assert f"conveyor: {child} could not start with its configuration" in text
    assert "Traceback" not in text
    assert "Conveyor is running" not in text
    assert len(run.events("supervisor.child_started")) == 1, "a refused configuration is not retried"


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_in_a_terminal_the_supervisor_and_its_children_log_console_lines(
    services: Services, pg: Conn, jobs_redis: Redis, smtp: SmtpSink, tmp_path: Path
) -> None:
    env = services_env(services, smtp.port, free_port())  # LOG_FORMAT unset
    controller, terminal = pty.openpty()
    received = bytearray()
    loop = asyncio.get_running_loop()

    def read() -> None:
        try:
            received.extend(os.read(controller, 65536))
        except OSError:  # EIO once no process holds the terminal any more
            loop.remove_reader(controller)

    def seen(text: bytes) -> Callable[[], Awaitable[bool | None]]:
        async def check() -> bool | None:
            return True if text in received else None

        return check

    proc = await asyncio.create_subprocess_exec(
        CONVEYOR, "run", "--only", "default", "--workers", "1",
        env=env, cwd=tmp_path, stdout=terminal, stderr=terminal, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    os.close(terminal)
    loop.add_reader(controller, read)
    try:
        await eventually(seen(b"Press Ctrl-C"), within=60)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=60) == 0
        await eventually(seen(b"supervisor.stopped"), within=10)
    finally:
        loop.remove_reader(controller)
        os.close(controller)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = received.decode(errors="replace")
    print(text[-3000:])  # noqa: T201 - shown only on failure

    assert '{"ts"' not in text, "no JSON line in a terminal"
    lines = text.splitlines()
    assert any(" supervisor " in line and "supervisor.child_ready child=default-1" in line for line in lines)
    assert any(" default-1 " in line and "worker.started queue=default" in line for line in lines), "the child too"


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_a_child_that_keeps_dying_is_restarted_with_backoff_then_given_up(
    services: Services, pg: Conn, jobs_redis: Redis, smtp: SmtpSink, tmp_path: Path
) -> None:
    env = services_env(services, smtp.port, free_port(), LOG_FORMAT="json", SHUTDOWN_GRACE_S="5")
    async with conveyor_run("--only", "default", "--workers", "2", env=env, cwd=tmp_path) as run:
        await run.banner()
        survivor = run.pid("default-2")
        assert survivor is not None
        killed: list[int] = []
        while run.proc.returncode is None and len(killed) < 5:  # what an OOM killer does to a leaky process

            async def next_incarnation() -> int | None:
                started = [e["pid"] for e in run.events("supervisor.child_started") if e["child"] == "default-1"]
                return started[-1] if started and started[-1] not in killed else None

            pid = await eventually(next_incarnation, within=30)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            killed.append(pid)

        assert await asyncio.wait_for(run.proc.wait(), timeout=60) == 1
        text = run.text()

    restarts = [e for e in run.events("supervisor.child_restarted") if e["child"] == "default-1"]
    assert [(e["exit_code"], e["signal"]) for e in restarts] == [(-9, "SIGKILL")] * 4
    assert [e["attempt"] for e in restarts] == [1, 2, 3, 4]
    assert [e["delay_s"] for e in restarts] == [0.5, 1.0, 2.0, 4.0]
    assert "conveyor: default-1 exited 5 times within 60 s (last exit code -9); not restarting it" in text
    assert run.events("supervisor.child_killed") == [], "the others were stopped, not killed"
    assert not alive(survivor)
    assert "Traceback" not in text


@dataclass(frozen=True, slots=True)
class _Command(ChildSpec):
    """A child that runs `command` (`{fd}` standing for its ready pipe)."""

    command: tuple[str, ...] = ()

    def argv(self, ready_fd: int) -> list[str]:
        return [arg.replace("{fd}", str(ready_fd)) for arg in self.command]


_UP_AND_WAITING = "import os, sys, time; os.write(int(sys.argv[1]), b'{}\\n'); time.sleep(120)"


@pytest.mark.timeout(60)
async def test_every_worker_is_stopped_even_when_the_gateway_failed_with_something_unexpected(tmp_path: Path) -> None:
    gateway = Child(_Command("gateway", "gateway", command=(str(tmp_path / "missing"),)), os.environ, RestartPolicy())
    worker = Child(
        _Command("default-1", "default", 0, command=(sys.executable, "-c", _UP_AND_WAITING, "{fd}")),
        os.environ,
        RestartPolicy(),
    )
    gateway_task, _ = gateway.start(), worker.start()
    await asyncio.wait_for(worker.ready.wait(), timeout=30)
    await asyncio.wait({gateway_task}, timeout=30)
    assert isinstance(gateway_task.exception(), FileNotFoundError)  # not a ChildFailed: spawning it failed
    pid = worker.pid
    assert pid is not None

    await _stop_in_order([gateway, worker], 1.0, 1.0, StopRequest())

    assert not alive(pid)


def test_one_stop_however_many_signals_and_only_a_later_ctrl_c_forces() -> None:
    now = [0.0]
    stop = StopRequest(clock=lambda: now[0])

    stop(signal.SIGTERM)
    stop(signal.SIGTERM)  # the copy make passes on
    now[0] = 0.2
    stop(signal.SIGINT)  # a double press
    assert stop.requested.is_set()
    assert not stop.forced.is_set()

    now[0] = 5.0
    stop(signal.SIGTERM)
    assert not stop.forced.is_set(), "SIGTERM never skips the grace period"
    stop(signal.SIGINT)
    assert stop.forced.is_set()


def test_restart_delays_double_from_half_a_second_to_thirty() -> None:
    policy = RestartPolicy()

    assert [policy.delay_s(n) for n in range(1, 9)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
