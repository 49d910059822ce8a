"""`make bench`: Conveyor (gateway + one worker process) beside stock arq on the same Redis, printed as ratios.

The entry point: arguments, the order of the phases and the report. Each figure family has its own module
(arq_baseline, gateway_load, drain, end_to_end, pickup, fair_share, dataset_bench); what they share is in
harness (configuration, event loops, load, counters), services (Redis pair, ledger database) and
conveyor_stack / conveyor_client (the processes under measurement and the bench's client of them).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence

import _paths  # noqa: F401 - first: tests/ on sys.path, for the helpers tests and the bench share
import dataset_bench
import report
from arq_baseline import stock_arq_round, tuned_arq_round
from conveyor_client import conveyor_client, truncate_jobs
from conveyor_stack import Stack, conveyor_stack, wait_ready
from drain import drain_phase
from end_to_end import e2e_phase
from fair_share import flood_phase
from gateway_load import gateway_phase
from harness import BenchError, Config, Figures, exit_on_sigterm, flush_redis, redis_costs, redis_snap, rss_mb, run
from pickup import pickup_phase
from services import background_redis_rate, bench_database, check_services, redis_pair


def parse_args(argv: Sequence[str] | None = None) -> Config:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=3000, help="jobs per Conveyor phase and tuned-arq drain (3000)")
    p.add_argument("--arq-jobs", type=int, default=1000, help="jobs per stock-arq drain; it runs ~200/s (1000)")
    p.add_argument("--latency-samples", type=int, default=200, help="Conveyor pickup samples per round (200)")
    p.add_argument("--arq-latency-samples", type=int, default=20, help="stock arq pickup samples per round (20)")
    p.add_argument("--rounds", type=int, default=3, help="rounds; every figure is the median over rounds (3)")
    p.add_argument("--concurrency", type=int, default=64, help="requests/enqueues in flight (64)")
    p.add_argument("--latency-gap-ms", type=float, default=50.0, help="random idle gap before a Conveyor sample")
    a = p.parse_args(argv)
    return Config(
        jobs=a.jobs,
        arq_jobs=min(a.arq_jobs, a.jobs),
        latency_samples=a.latency_samples,
        arq_latency_samples=a.arq_latency_samples,
        rounds=a.rounds,
        concurrency=a.concurrency,
        latency_gap_s=a.latency_gap_ms / 1000,
        redis_base=os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379"),
        admin_url=os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )


async def conveyor_round(stack: Stack) -> Figures:
    """Gateway alone, then a fresh worker drains that backlog, then end to end, then pickup latency."""
    await flush_redis(stack.cfg)
    async with conveyor_client(stack) as c:
        await truncate_jobs(c)
        before = await redis_snap(c.redis)
        gateway, accepted = await gateway_phase(c)
        drain = await drain_phase(c, accepted)
        costs = redis_costs(before, await redis_snap(c.redis), max(accepted, 1))
        e2e = await e2e_phase(c)
        pickup = await pickup_phase(c)
        flood = await flood_phase(c)
        if c.refused:
            print(f"  ! POSTs not accepted with 202: {dict(c.refused)}", file=sys.stderr)
    assert stack.gateway is not None  # noqa: S101
    return {**gateway, **drain, **costs, **e2e, **pickup, **flood, "gateway_rss_mb": rss_mb(stack.gateway.pid)}


def measure(cfg: Config, stack: Stack) -> tuple[list[Figures], list[Figures], list[Figures]]:
    stock: list[Figures] = []
    tuned: list[Figures] = []
    conv: list[Figures] = []
    for n in range(1, cfg.rounds + 1):
        print(f"round {n}/{cfg.rounds}: stock arq …", flush=True)
        stock.append(run(stock_arq_round(cfg)))
        print(f"round {n}/{cfg.rounds}: tuned arq …", flush=True)
        tuned.append(run(tuned_arq_round(cfg), fast_loop=True))
        print(f"round {n}/{cfg.rounds}: conveyor …", flush=True)
        try:
            conv.append(run(conveyor_round(stack), fast_loop=True))
        finally:
            stack.stop_worker()
    return stock, tuned, conv


def bench(cfg: Config) -> None:
    with redis_pair(cfg) as claimed:
        measure_and_print(claimed)


def measure_and_print(cfg: Config) -> None:
    versions = run(check_services(cfg))
    background = run(background_redis_rate(cfg))
    run(flush_redis(cfg))
    started = time.perf_counter()
    with bench_database(cfg) as cfg_db, conveyor_stack(cfg_db) as stack:
        gateway = stack.start_gateway()
        run(wait_ready(f"http://127.0.0.1:{stack.api_port}/ready", gateway))
        stock, tuned, conv = measure(cfg_db, stack)
        logs = stack.log_summary()
    print()
    report.print_facts(cfg, versions, background, stack)
    print(f"targets: docs/performance.md; wall time {time.perf_counter() - started:.0f} s")
    print()
    s, t, c = report.medians(stock), report.medians(tuned), report.medians(conv)
    report.print_table(report.rows(c, s, t))
    report.print_details(c, s, t, conv)
    report.print_rounds(stock, tuned, conv)
    if logs:
        print(*logs, sep="\n")
    print()
    dataset_bench.main()  # dataset.analyze against a bare polars scan (BENCH_DATASET_MB, default 1024)


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    try:
        bench(cfg)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
