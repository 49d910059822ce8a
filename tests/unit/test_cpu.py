"""The CPU pool: a child that dies fails only its own task, a cancelled task's process is killed, and the
pool replaces what it lost."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest

from workers.families.dataset.cpu import open_cpu_pool


def test_a_dead_child_breaks_its_task_and_the_next_submit_gets_a_fresh_pool() -> None:
    with open_cpu_pool(1) as pool:
        first = pool.submit(os.getpid).result(timeout=60)
        with pytest.raises(BrokenProcessPool):
            pool.submit(os._exit, 1).result(timeout=60)

        second = pool.submit(os.getpid).result(timeout=60)

    assert second != first, "a new child serves the work after the crash"


def test_children_cap_the_engines_threads() -> None:
    with open_cpu_pool(2) as pool:
        threads = pool.submit(os.getenv, "POLARS_MAX_THREADS").result(timeout=60)

    assert threads == str(max(1, (os.cpu_count() or 1) // 2))


def wait_for(path: Path) -> int:
    """Runs in a pool process: says it started (a file named after `path`), then waits for `path`."""
    Path(f"{path}.started").write_text(str(os.getpid()))
    while not path.exists():
        time.sleep(0.01)
    return os.getpid()


def started(path: Path) -> int:
    """The pool process that runs `wait_for(path)`, once it has started."""
    marker = Path(f"{path}.started")
    until(lambda: marker.exists() and marker.read_text() != "")
    return int(marker.read_text())


def until(condition: Callable[[], bool], within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


def test_cancelling_a_running_task_kills_its_process_and_a_fresh_one_serves_the_next(tmp_path: Path) -> None:
    with open_cpu_pool(1) as pool:
        running = pool.submit(wait_for, tmp_path / "never")
        pid = started(tmp_path / "never")

        assert running.cancel(), "a running task can be cancelled"
        until(lambda: gone(pid))
        after = pool.submit(os.getpid).result(timeout=60)

    assert after != pid
    assert running.cancelled()


def test_cancelling_one_task_leaves_the_others_running(tmp_path: Path) -> None:
    with open_cpu_pool(2) as pool:
        doomed = pool.submit(wait_for, tmp_path / "never")
        kept = pool.submit(wait_for, tmp_path / "release")
        doomed_pid, kept_pid = started(tmp_path / "never"), started(tmp_path / "release")

        doomed.cancel()
        until(lambda: gone(doomed_pid))
        (tmp_path / "release").touch()

        assert kept.result(timeout=60) == kept_pid, "the other task ran to its end in its own process"


def test_a_queued_task_that_is_cancelled_never_runs(tmp_path: Path) -> None:
    with open_cpu_pool(1) as pool:
        first = pool.submit(wait_for, tmp_path / "release")
        pid = started(tmp_path / "release")
        queued = pool.submit(wait_for, tmp_path / "queued")

        assert queued.cancel()
        (tmp_path / "release").touch()
        assert first.result(timeout=60) == pid
        assert pool.submit(os.getpid).result(timeout=60) == pid, "nothing was killed"

    assert not Path(f"{tmp_path / 'queued'}.started").exists()


def test_a_task_that_raises_fails_only_itself() -> None:
    with open_cpu_pool(1) as pool:
        pid = pool.submit(os.getpid).result(timeout=60)
        with pytest.raises(FileNotFoundError):
            pool.submit(os.stat, "/no/such/file").result(timeout=60)

        assert pool.submit(os.getpid).result(timeout=60) == pid
