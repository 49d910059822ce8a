"""`make bench` keeps working: the whole benchmark runs end to end on tiny figures. Nothing about speed is
asserted here (timing belongs to the benchmark itself), only that every phase ran (each has a row: a phase
that ran only in `make bench` would be untested code), the `perf:` line sums them up, and the services it
drove logged no warning (a limiter failing open on every request once hid there) beyond a dependency call
timing out on a loaded machine."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from support.stack import Services

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "--jobs", "60", "--arq-jobs", "20", "--latency-samples", "5", "--arq-latency-samples", "2", "--rounds", "1",
    "--e2e-s", "1", "--soak-s", "1", "--batch-size", "30", "--batches", "2", "--scale-workers", "1,2",
]  # fmt: skip
ROWS = (
    "pickup latency p50, idle worker, ms",
    "pickup latency p99, idle worker, ms",
    "drain, 1 worker, ledger on, jobs/s",
    "POST /jobs, 64 clients, req/s",
    "POST /jobs p50, ms",
    "POST /jobs p99, ms",
    "end to end HTTP→succeeded, 1 s, jobs/s",
    "end to end RSS at end / after warm-up",
    "POST /batches of 30, jobs/s",
    "Redis commands per job, jobs server",
    "Redis commands per job, cache server",
    "drain, 2 worker processes, jobs/s",
    "soak RSS gateway, MB (after / before)",
    "soak RSS worker1, MB (after / before)",
    "soak RSS, worst process",
)
PERF_KEYS = (
    "pickup_p50_ms", "pickup_p99_ms", "drain_x_tuned", "post_x_arq_client", "post_p99_ms", "e2e_x_tuned",
    "batch_x_single", "redis_cmds_per_job", "cache_cmds_per_job", "scale2_x_1", "soak_rss_ratio",
)  # fmt: skip


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
    table = {
        cells[0]: cells[1:]
        for line in text.splitlines()
        if line.count("|") == 6 and len(cells := [c.strip() for c in line.split("|")]) == 7
    }
    missing = [row for row in ROWS if row not in table]
    assert missing == [], f"no row {missing} in:\n{text}"
    assert [row for row in ROWS if table[row][0] == "n/a"] == [], f"a phase measured nothing:\n{text}"
    perf = [line for line in text.splitlines() if line.startswith("perf: ")]
    assert len(perf) == 1, f"one perf line, at the end:\n{text}"
    figures = dict(item.split("=", 1) for item in perf[0].removeprefix("perf: ").split())
    assert [key for key in PERF_KEYS if figures.get(key, "n/a") == "n/a"] == [], perf[0]
    met, _, judged = figures["met"].partition("/")
    assert int(judged) >= 6, f"targets judged in a tiny run (the long-run ones are n/a): {perf[0]}"
    assert 0 <= int(met) <= int(judged), perf[0]
    assert "ratio conveyor / bare" in text, "the dataset figures are printed"
    logged = [line.strip() for line in text.splitlines() if line.startswith(("    W ", "    E "))]
    assert [line for line in logged if TRANSIENT not in line] == [], "the services logged a warning or error"
