"""`dataset.analyze` throughput and memory: Conveyor's engine in the worker's CPU pool beside a bare polars
streaming scan of the same file, in the same run. Part of `make bench`; alone: `python bench/dataset_bench.py`.

BENCH_DATASET_MB (default 1024) sets the CSV's size, BENCH_DATASET_ROUNDS (default 3) the rounds; every
figure is the median over rounds, the two sides alternating so neither gets a warmer machine.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

import polars as pl

from workers.families.dataset.cpu import child_threads

TARGET_RATIO: Final = 0.8  # docs/performance.md: >= 0.8x a bare streaming scan
TARGET_RSS_MB: Final = 300.0
CHUNK_ROWS: Final = 500_000

# Each side runs in a fresh interpreter so its peak RSS (VmHWM) is its own.
BARE_SCAN: Final = """
import json, sys, time, polars as pl
t = time.perf_counter()
pl.scan_csv(sys.argv[1]).select(pl.all().max()).collect(engine="streaming")
elapsed = time.perf_counter() - t
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
print(json.dumps({"seconds": elapsed, "rss_mb": int(hwm) / 1024}))
"""

CONVEYOR: Final = """
import asyncio, json, os, sys, time
import workers.processes  # the worker process's own imports, so its footprint is the worker's
from workers.families.dataset.cpu import open_cpu_pool
from workers.families.dataset.handler import run_engine

def hwm_mb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0

async def main():
    path = sys.argv[1]
    with open_cpu_pool(1) as pool:
        await asyncio.get_running_loop().run_in_executor(pool, os.getpid)  # start the child first
        t = time.perf_counter()
        result = await run_engine(None, pool, path, delimiter=",", has_header=True, size=os.path.getsize(path))
        elapsed = time.perf_counter() - t
        child = max((hwm_mb(pid) for pid in pool.child_pids()), default=0.0)
    print(json.dumps({"seconds": elapsed, "parent_mb": hwm_mb(os.getpid()), "child_mb": child,
                      "rows": result["rows"]}))

asyncio.run(main())
"""


def write_csv(path: Path, megabytes: int) -> int:
    """About `megabytes` MiB of CSV with five mixed columns (integer, float, boolean, date, string)."""
    target, start = megabytes * 1024 * 1024, 0
    with path.open("wb") as f:
        while f.tell() < target:
            frame = pl.select(pl.int_range(start, start + CHUNK_ROWS, eager=True).alias("id")).with_columns(
                ((pl.col("id") * 7919 % 100_003) / 100.0).alias("amount"),
                (pl.col("id") % 3 == 0).alias("active"),
                (pl.lit(dt.date(2020, 1, 1)) + pl.duration(days=pl.col("id") % 2000)).alias("day"),
                pl.format("customer-{}", pl.col("id") * 2_654_435_761 % 1_000_003).alias("name"),
            )
            frame.write_csv(f, include_header=start == 0)
            start += CHUNK_ROWS
        return f.tell()


def run_side(code: str, path: Path, threads: int) -> dict[str, float]:
    env = {**os.environ, "POLARS_MAX_THREADS": str(threads)}
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True, check=False, timeout=3600
    )
    if out.returncode != 0:
        raise RuntimeError(f"dataset bench side failed: {out.stderr.strip()[-2000:]}")
    figures: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


def main() -> int:
    megabytes = int(os.environ.get("BENCH_DATASET_MB", "1024"))
    rounds = int(os.environ.get("BENCH_DATASET_ROUNDS", "3"))
    threads = child_threads(1)  # what a CPU pool child of a WORKER_CPU_PROCESSES=1 worker gets
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-") as folder:
        path = Path(folder) / "dataset.csv"
        started = time.perf_counter()
        size = write_csv(path, megabytes)
        print(f"dataset: {size / 1e6:.0f} MB CSV, 5 columns, written in {time.perf_counter() - started:.1f} s; "
              f"{rounds} rounds, POLARS_MAX_THREADS={threads}", flush=True)  # fmt: skip
        bare: list[dict[str, float]] = []
        conv: list[dict[str, float]] = []
        for n in range(rounds):
            sides = [(bare, BARE_SCAN), (conv, CONVEYOR)]
            for into, code in sides if n % 2 == 0 else sides[::-1]:
                into.append(run_side(code, path, threads))
    bare_mbps = statistics.median(size / 1e6 / r["seconds"] for r in bare)
    conv_mbps = statistics.median(size / 1e6 / r["seconds"] for r in conv)
    parent = max(r["parent_mb"] for r in conv)
    child = max(r["child_mb"] for r in conv)
    ratio = conv_mbps / bare_mbps
    print(f"{'metric':44} {'value':>12} {'target':>12}")
    print(f"{'bare polars streaming scan (every column)':44} {bare_mbps:>9.0f} MB/s {'':>12}")
    print(f"{'conveyor dataset.analyze engine, CPU pool':44} {conv_mbps:>9.0f} MB/s {'':>12}")
    print(f"{'ratio conveyor / bare':44} {ratio:>11.2f}x {'>= ' + str(TARGET_RATIO) + 'x':>12}")
    print(f"{'peak RSS bare scan process':44} {max(r['rss_mb'] for r in bare):>9.0f} MB {'':>12}")
    print(f"{'peak RSS worker + CPU child (VmHWM sum)':44} {parent + child:>9.0f} MB {'<= 300 MB':>12}")
    print(f"  worker process {parent:.0f} MB, CPU child {child:.0f} MB; rows {int(conv[0]['rows'])}")
    print(f"  per round MB/s bare {[round(size / 1e6 / r['seconds']) for r in bare]}, "
          f"conveyor {[round(size / 1e6 / r['seconds']) for r in conv]}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
