"""The printed report: the table of Conveyor beside stock arq against the targets of docs/performance.md, the
details behind it, the spread over rounds and the facts of the machine and services."""

from __future__ import annotations

import math
import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from conveyor_stack import Stack
from fair_share import FLOOD_SLEEP_S
from harness import Config, Figures, package_version, uvloop_factory


def medians(rounds: Sequence[Figures]) -> Figures:
    keys = rounds[0].keys() if rounds else []
    return {k: statistics.median(r[k] for r in rounds) for k in keys}


@dataclass(frozen=True)
class Row:
    metric: str
    conveyor: float
    arq: float
    higher_is_better: bool
    target: str = "-"
    met: bool | None = None

    @property
    def gain(self) -> float:
        """>1 means Conveyor is better: conveyor/arq for rates, arq/conveyor for latencies and costs."""
        num, den = (self.conveyor, self.arq) if self.higher_is_better else (self.arq, self.conveyor)
        return num / den if den else math.nan


def rows(conv: Figures, stock: Figures, tuned: Figures) -> list[Row]:
    c, a = conv, stock
    tuned_rate, arq_cmds = tuned["drain_rate"], a["redis_cmds_per_job"]
    return [
        Row("pickup latency p50, ms", c["pickup_p50_ms"], a["pickup_p50_ms"], False,
            "≤ 2 (SAQ ≈ 1.9)", c["pickup_p50_ms"] <= 2),
        Row("pickup latency p99, ms", c["pickup_p99_ms"], a["pickup_p99_ms"], False, "≤ 5", c["pickup_p99_ms"] <= 5),
        Row("drain, 1 worker, jobs/s", c["drain_rate"], a["drain_rate"], True,
            f"≥ tuned arq+uvloop here, {tuned_rate:,.0f} (ref 3,000)", c["drain_rate"] >= tuned_rate),
        Row("gateway enqueue, req/s", c["enqueue_rate"], a["enqueue_rate"], True,
            "≥ 3,000", c["enqueue_rate"] >= 3000),
        Row("gateway enqueue p50, ms", c["enqueue_p50_ms"], a["enqueue_p50_ms"], False),
        Row("gateway enqueue p99, ms", c["enqueue_p99_ms"], a["enqueue_p99_ms"], False,
            "≤ 50", c["enqueue_p99_ms"] <= 50),
        Row("end to end HTTP→succeeded, jobs/s", c["e2e_rate"], a["drain_rate"], True,
            "≥ 1,500 (1-min soak not run)", c["e2e_rate"] >= 1500),
        Row("worker CPU per job, ms", c["worker_cpu_ms_per_job"], a["worker_cpu_ms_per_job"], False,
            f"(tuned arq here: {tuned['worker_cpu_ms_per_job']:.2f})"),
        Row("Redis commands per job", c["redis_cmds_per_job"], arq_cmds, False,
            f"< stock arq's {arq_cmds:.1f}", c["redis_cmds_per_job"] < arq_cmds),
        Row("Redis CPU per job, µs", c["redis_cpu_us_per_job"], a["redis_cpu_us_per_job"], False),
        Row("Redis bytes kept per job", c["redis_bytes_per_job"], a["redis_bytes_per_job"], False),
    ]  # fmt: skip


def fmt(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


def print_table(table: Sequence[Row]) -> None:
    header = ("metric", "conveyor", "stock arq", "gain ×", "target", "met?")
    cells = [header] + [
        (r.metric, fmt(r.conveyor), fmt(r.arq), fmt(r.gain), r.target, {True: "yes", False: "NO", None: "-"}[r.met])
        for r in table
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for n, row in enumerate(cells):
        print(
            " | ".join(
                c.ljust(w) if i in (0, 4) else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            print("-+-".join("-" * w for w in widths))


def print_details(conv: Figures, stock: Figures, tuned: Figures, per_round: Sequence[Figures]) -> None:
    ttl_gb = conv["redis_bytes_per_job"] * 1500 * 86400 / 1e9
    print()
    print(
        f"tuned arq (max_jobs 100, poll 10 ms, uvloop): drain {fmt(tuned['drain_rate'])} jobs/s, "
        f"enqueue {fmt(tuned['enqueue_rate'])}/s, worker CPU {tuned['worker_cpu_ms_per_job']:.2f} ms/job"
    )
    print(f"conveyor POST rate while the worker drains (end-to-end phase): {fmt(conv['e2e_post_rate'])} req/s")
    print(
        f"CPU per request: gateway {conv['gateway_cpu_ms_per_request']:.2f} ms, "
        f"bench client {conv['client_cpu_ms_per_request']:.2f} ms (same cores)"
    )
    print(
        f"worker RSS after draining {fmt(conv['worker_rss_mb'])} MB; gateway RSS after each round: "
        + ", ".join(f"{r['gateway_rss_mb']:.0f}" for r in per_round)
        + " MB"
    )
    print(f"Redis bytes kept per job × 1,500 jobs/s × RESULT_TTL_S 86,400 s ≈ {ttl_gb:,.1f} GB")
    print(
        f"fair share: pickup p50 of one owner's job behind another owner's high-priority backlog "
        f"({FLOOD_SLEEP_S:g} s jobs, more than the worker's slots): {fmt(conv['flood_pickup_p50_ms'])} ms"
    )
    print("gain ×: > 1 means Conveyor is better (rates conveyor/arq; latencies and costs arq/conveyor).")
    print("pickup: Conveyor = ledger created_at → started_at (PostgreSQL clock, includes the insert's commit);")
    print("        stock arq = enqueue_job call → handler start (perf_counter, in-process, default poll 0.5 s).")
    print("drain/e2e: Conveyor rates come from ledger timestamps; arq's from the wall time of a burst worker.")
    print("end to end: the stock-arq column is its drain rate (arq has no HTTP or ledger).")
    print("Redis figures are server-wide counters: other clients of the same Redis inflate them.")


def print_rounds(stock: Sequence[Figures], tuned: Sequence[Figures], conv: Sequence[Figures]) -> None:
    """The spread behind the medians."""
    for n, (s, t, c) in enumerate(zip(stock, tuned, conv, strict=True), start=1):
        print(
            f"round {n}: conveyor drain {fmt(c['drain_rate'])}/s, e2e {fmt(c['e2e_rate'])}/s, "
            f"gateway {fmt(c['enqueue_rate'])} req/s, pickup p50 {fmt(c['pickup_p50_ms'])} ms; "
            f"stock arq drain {fmt(s['drain_rate'])}/s, pickup p50 {fmt(s['pickup_p50_ms'])} ms; "
            f"tuned arq drain {fmt(t['drain_rate'])}/s"
        )


def print_facts(cfg: Config, versions: dict[str, str], background: float, stack: Stack) -> None:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"machine: nproc {affinity} (cpu_count {os.cpu_count()}), {platform.platform()}")
    uvloop = package_version("uvloop") if uvloop_factory() else None
    print(
        f"python {platform.python_version()}, arq {package_version('arq')}, "
        f"uvloop {'yes ' + uvloop if uvloop else 'no'} (gateway, worker, bench client, tuned arq), "
        f"Redis {versions['redis']}, PostgreSQL {versions['postgresql']}"
    )
    print(
        f"sizes: {cfg.jobs} jobs/phase (stock arq drain {cfg.arq_jobs}), pickup samples {cfg.latency_samples} "
        f"(stock arq {cfg.arq_latency_samples}), {cfg.concurrency} in flight, medians of {cfg.rounds} rounds"
    )
    print(f"Redis background load from other clients: {background:.0f} commands/s")
    inherited = stack.inherited()
    print(f"Conveyor settings inherited from the environment: {', '.join(inherited) if inherited else 'none'}")
