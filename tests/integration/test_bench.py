"""`make bench` keeps working: the whole benchmark runs end to end on tiny figures. Nothing about speed is
asserted here (timing belongs to the benchmark itself), only that every phase ran, printed its figures,
and that the services it drove logged no warning (a limiter failing open on every request once hid
there) beyond a dependency call timing out on a loaded machine."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from support.stack import Services

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--jobs", "60", "--arq-jobs", "20", "--latency-samples", "5", "--arq-latency-samples", "2", "--rounds", "1"]


# A dependency call that timed out on a loaded machine is load, not a defect; any other warning is one.
TRANSIENT = "reason=TimeoutError"


@pytest.mark.timeout(300)
async def test_the_benchmark_runs_end_to_end(services: Services) -> None:
    env = {**os.environ, "BENCH_DATASET_MB": "2", "BENCH_DATASET_ROUNDS": "1"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "bench" / "bench.py"), *TINY,
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout=240)
    finally:
        if process.returncode is None:
            process.terminate()  # on SIGTERM the bench stops the gateway and worker it started
            try:
                await asyncio.wait_for(process.wait(), timeout=30)
            except TimeoutError:
                process.kill()
                await process.wait()
    text = output.decode(errors="replace")

    assert process.returncode == 0, text[-4000:]
    metrics = [line.partition("|")[0].strip() for line in text.splitlines() if line.count("|") == 5]
    for metric in ("pickup latency p50, ms", "drain, 1 worker, jobs/s", "gateway enqueue, req/s"):
        assert metric in metrics, f"no {metric!r} row in:\n{text}"
    assert "ratio conveyor / bare" in text, "the dataset figures are printed"
    logged = [line.strip() for line in text.splitlines() if line.startswith(("    W ", "    E "))]
    assert [line for line in logged if TRANSIENT not in line] == [], "the services logged a warning or error"
