"""The CPU pool: a child that dies fails only its own task, and the pool replaces itself."""

from __future__ import annotations

import os
from concurrent.futures.process import BrokenProcessPool

import pytest

from workers.cpu import open_cpu_pool


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
