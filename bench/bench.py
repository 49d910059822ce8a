"""`make bench`: Conveyor (gateway + worker processes) beside stock and tuned arq on the same Redis, every
target of docs/performance.md printed as a ratio to its baseline of the same run, then one `perf:` line.

The entry point: arguments, the order of the phases and the report. Each figure family has its own module
(arq_baseline, gateway_load, batches, drain, end_to_end, pickup, fair_share, scale_out, dataset_bench); what
they share is in harness (configuration, event loops, load, counters), services (Redis pair, ledger
database), cache_server (the cache's own Redis) and conveyor_stack / conveyor_client (the processes under
measurement and the bench's client of them).
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
from batches import batches_phase
from conveyor_client import Client, conveyor_client, reset
from conveyor_stack import Stack, conveyor_stack, wait_ready
from drain import drain_phase
from end_to_end import e2e_phase, soak_phase
from fair_share import flood_phase
from gateway_load import gateway_phase
from harness import BenchError, Config, Figures, exit_on_sigterm, flush_redis, redis_costs, redis_snap, rss_mb, run
from pickup import pickup_phase
from private_redis import private_servers
from report import Soak
from scale_out import scale_phase
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
    p.add_argument("--e2e-s", type=float, default=60.0, help="seconds of end-to-end load per round (60)")
    p.add_argument("--soak-s", type=float, default=60.0, help="seconds of the soak, once (60; 600 for the target)")
    p.add_argument("--batch-size", type=int, default=1000, help="jobs per POST /batches (1000)")
    p.add_argument("--batches", type=int, default=8, help="batches per round in the batches phase (8)")
    p.add_argument("--batch-concurrency", type=int, default=4, help="batches in flight (4)")
    p.add_argument(
        "--shared-jobs-redis",
        action="store_true",
        help="jobs on TEST_REDIS_URL instead of the bench's own redis-server (other clients inflate its counters)",
    )
    p.add_argument("--scale-workers", default="1,2,4", help="worker process counts of the scale-out phase (1,2,4)")
    a = p.parse_args(argv)
    scale = tuple(int(n) for n in a.scale_workers.split(","))
    if 1 not in scale:
        p.error("--scale-workers must include 1 (the other counts are ratios to it)")
    return Config(
        jobs=a.jobs,
        arq_jobs=min(a.arq_jobs, a.jobs),
        latency_samples=a.latency_samples,
        arq_latency_samples=a.arq_latency_samples,
        rounds=a.rounds,
        concurrency=a.concurrency,
        latency_gap_s=a.latency_gap_ms / 1000,
        e2e_s=a.e2e_s,
        soak_s=a.soak_s,
        batch_size=a.batch_size,
        batches=a.batches,
        batch_concurrency=a.batch_concurrency,
        scale_workers=scale,
        jobs_redis="shared" if a.shared_jobs_redis else "own",
        redis_base=os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379"),
        admin_url=os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )


async def conveyor_round(stack: Stack) -> Figures:
    """Batches and single POSTs with the gateway alone, a fresh worker drains that backlog, end to end, pickup
    latency and the fair share on that worker, then the scale-out drains."""
    async with conveyor_client(stack) as c:
        await reset(c)
        batches = await batches_phase(c)
        jobs0, cache0 = await redis_snap(c.redis), await redis_snap(c.cache)
        gateway, accepted = await gateway_phase(c)
        drain = await drain_phase(c, accepted)
        costs = redis_costs(jobs0, await redis_snap(c.redis), max(accepted, 1))
        cache_costs = redis_costs(cache0, await redis_snap(c.cache), max(accepted, 1))
        try:
            e2e = await e2e_phase(c)
            pickup = await pickup_phase(c)
            flood = await flood_phase(c)
        finally:
            stack.stop_workers()
        scale = await scale_phase(c)
        report_refused(c)
    assert stack.gateway is not None  # noqa: S101
    return {
        **batches, **gateway, **drain, **costs, "cache_cmds_per_job": cache_costs["redis_cmds_per_job"],
        **e2e, **pickup, **flood, **scale, "gateway_rss_mb": rss_mb(stack.gateway.pid),
    }  # fmt: skip


async def soak_round(stack: Stack) -> Soak:
    async with conveyor_client(stack) as c:
        await reset(c)
        figures, before, after = await soak_phase(c)
        report_refused(c)
    return Soak(figures, before, after)


def report_refused(c: Client) -> None:
    if c.refused:
        print(f"  ! POSTs not accepted with 202: {dict(c.refused)}", file=sys.stderr)
        c.refused.clear()


def measure(cfg: Config, stack: Stack) -> tuple[list[Figures], list[Figures], list[Figures], Soak]:
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
            stack.stop_workers()
    print(f"soak: {cfg.soak_s:g} s of end-to-end load …", flush=True)
    try:
        soak = run(soak_round(stack), fast_loop=True)
    finally:
        stack.stop_workers()
    return stock, tuned, conv, soak


def bench(cfg: Config) -> None:
    with private_servers(cfg) as own, redis_pair(own) as claimed:
        measure_and_print(claimed)


def measure_and_print(cfg: Config) -> None:
    versions = run(check_services(cfg))
    background = run(background_redis_rate(cfg))
    run(flush_redis(cfg))
    started = time.perf_counter()
    with bench_database(cfg) as cfg_db, conveyor_stack(cfg_db) as stack:
        gateway = stack.start_gateway()
        run(wait_ready(f"http://127.0.0.1:{stack.api_port}/ready", gateway))
        stock, tuned, conv, soak = measure(cfg_db, stack)
        logs = stack.log_summary()
    print()
    report.print_facts(cfg, versions, background, stack)
    print(f"targets: docs/performance.md; wall time {time.perf_counter() - started:.0f} s")
    print()
    s, t, c = report.medians(stock), report.medians(tuned), report.medians(conv)
    table = report.rows(cfg, c, s, t, soak)
    report.print_table(table)
    report.print_details(cfg, c, s, t, conv, soak)
    report.print_rounds(stock, tuned, conv)
    if logs:
        print(*logs, sep="\n")
    print()
    dataset_bench.main()  # dataset.analyze against a bare polars scan (BENCH_DATASET_MB, default 1024)
    print()
    print(report.perf_line(table))


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
