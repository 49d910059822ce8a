"""The printed report: every target of docs/performance.md as Conveyor beside its baseline of the same run,
their ratio and whether the target is met; the details behind it, the spread over rounds, the facts of the
machine and services, and the one-line `perf:` summary."""

from __future__ import annotations

import math
import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from conveyor_stack import Stack
from fair_share import FLOOD_SLEEP_S
from harness import Config, Figures, package_version, uvloop_factory

from shared.core.policy_config import JobStoreConfig

E2E_MIN_S = 60.0  # the end-to-end target holds for a sustained minute: a shorter run cannot meet it
SOAK_MIN_S = 600.0  # the RSS target is over a 10-minute soak
SCALE_MIN_CORES = 4  # 2 processes at 1.7 times one, where cores allow: gateway, client, Redis, PostgreSQL share them
RSS_GROWTH = 1.1


def medians(rounds: Sequence[Figures]) -> Figures:
    keys = rounds[0].keys() if rounds else []
    return {k: statistics.median(r[k] for r in rounds) for k in keys}


@dataclass(frozen=True)
class Soak:
    """The soak's figures and the RSS (MB) of each process after the warm-up and at the end."""

    figures: Figures
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    """One figure: Conveyor, its baseline of the same run, and the target. `key` names it on the perf line
    (its value there is `perf` when given, else the ratio); `met` is None where no target applies."""

    metric: str
    conveyor: float
    baseline: float
    baseline_name: str
    target: str = "-"
    met: bool | None = None
    key: str = ""
    perf: float | None = None

    @property
    def ratio(self) -> float:
        """Conveyor / baseline, whatever the figure: > 1 is better for rates, worse for latencies and costs."""
        return self.conveyor / self.baseline if self.baseline else math.nan

    @property
    def perf_value(self) -> float:
        return self.ratio if self.perf is None else self.perf


def nproc() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def rows(cfg: Config, conv: Figures, stock: Figures, tuned: Figures, soak: Soak) -> list[Row]:
    c, s, t = conv, stock, tuned
    e2e_long = cfg.e2e_s >= E2E_MIN_S
    soak_long = cfg.soak_s >= SOAK_MIN_S
    table = [
        Row("pickup latency p50, idle worker, ms", c["pickup_p50_ms"], s["pickup_p50_ms"], "stock arq",
            "≤ 2 ms", c["pickup_p50_ms"] <= 2, "pickup_p50_ms", c["pickup_p50_ms"]),
        Row("pickup latency p99, idle worker, ms", c["pickup_p99_ms"], s["pickup_p99_ms"], "stock arq",
            "≤ 5 ms", c["pickup_p99_ms"] <= 5, "pickup_p99_ms", c["pickup_p99_ms"]),
        Row("drain, 1 worker, ledger on, jobs/s", c["drain_rate"], t["drain_rate"], "tuned arq",
            "≥ 1.0× tuned arq", c["drain_rate"] >= t["drain_rate"], "drain_x_tuned"),
        Row(f"POST /jobs, {cfg.concurrency} clients, req/s", c["enqueue_rate"], t["enqueue_rate"], "arq client",
            "≥ 1.0× arq client", c["enqueue_rate"] >= t["enqueue_rate"], "post_x_arq_client"),
        Row("POST /jobs p50, ms", c["enqueue_p50_ms"], t["enqueue_p50_ms"], "arq client"),
        Row("POST /jobs p99, ms", c["enqueue_p99_ms"], t["enqueue_p99_ms"], "arq client",
            "≤ 50 ms", c["enqueue_p99_ms"] <= 50, "post_p99_ms", c["enqueue_p99_ms"]),
        Row(f"end to end HTTP→succeeded, {cfg.e2e_s:g} s, jobs/s", c["e2e_rate"], t["drain_rate"], "tuned arq",
            "≥ 0.5× tuned arq" + ("" if e2e_long else f" (n/a: under {E2E_MIN_S:g} s)"),
            c["e2e_rate"] >= 0.5 * t["drain_rate"] if e2e_long else None, "e2e_x_tuned"),
        Row("end to end RSS at end / after warm-up", c["e2e_rss_ratio"], 1.0, "-",
            f"≤ {RSS_GROWTH}× (memory flat)" + ("" if e2e_long else " (n/a: short run)"),
            c["e2e_rss_ratio"] <= RSS_GROWTH if e2e_long else None, "e2e_rss_ratio", c["e2e_rss_ratio"]),
        Row(f"POST /batches of {cfg.batch_size:,}, jobs/s", c["batch_rate"], c["enqueue_rate"], "single POST",
            "≥ 5× single POST", c["batch_rate"] >= 5 * c["enqueue_rate"], "batch_x_single"),
        Row("Redis commands per job, jobs server", c["redis_cmds_per_job"], s["redis_cmds_per_job"], "stock arq",
            "≤ 10", c["redis_cmds_per_job"] <= 10, "redis_cmds_per_job", c["redis_cmds_per_job"]),
        Row("Redis commands per job, cache server", c["cache_cmds_per_job"], math.nan, "-",
            key="cache_cmds_per_job", perf=c["cache_cmds_per_job"]),
    ]  # fmt: skip
    one = c["scale_1_rate"]
    for n in cfg.scale_workers:
        if n == 1:
            continue
        target, met = "-", None
        if n == 2:
            cores = nproc() >= SCALE_MIN_CORES
            target = "≥ 1.7× one" + ("" if cores else f" (n/a: nproc {nproc()} < {SCALE_MIN_CORES})")
            met = c["scale_2_rate"] >= 1.7 * one if cores else None
        table.append(Row(f"drain, {n} worker processes, jobs/s", c[f"scale_{n}_rate"], one, "1 process",
                         target, met, f"scale{n}_x_1"))  # fmt: skip
    soak_target = f"≤ {RSS_GROWTH}×" + ("" if soak_long else f" (n/a: {cfg.soak_s:g} s < {SOAK_MIN_S:g} s)")
    for name, before in soak.before.items():
        after = soak.after.get(name, math.nan)
        table.append(Row(f"soak RSS {name}, MB (after / before)", after, before, "before",
                         soak_target, after <= RSS_GROWTH * before if soak_long else None,
                         f"soak_rss_{name}"))  # fmt: skip
    ratios = [soak.after.get(n, math.nan) / b for n, b in soak.before.items() if b]
    worst = max(ratios) if ratios else math.nan
    table.append(Row("soak RSS, worst process", worst, 1.0, "-", soak_target,
                     worst <= RSS_GROWTH if soak_long else None, "soak_rss_ratio", worst))  # fmt: skip
    table += [
        Row("worker CPU per job, ms", c["worker_cpu_ms_per_job"], t["worker_cpu_ms_per_job"], "tuned arq"),
        Row("Redis CPU per job, µs", c["redis_cpu_us_per_job"], s["redis_cpu_us_per_job"], "stock arq"),
        Row("Redis bytes kept per job", c["redis_bytes_per_job"], s["redis_bytes_per_job"], "stock arq"),
    ]
    return table


def fmt(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


def print_table(table: Sequence[Row]) -> None:
    header = ("metric", "conveyor", "baseline", "of", "ratio ×", "target", "met?")
    cells = [header] + [
        (r.metric, fmt(r.conveyor), fmt(r.baseline), r.baseline_name, fmt(r.ratio), r.target,
         {True: "yes", False: "NO", None: "-"}[r.met])
        for r in table
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for n, row in enumerate(cells):
        left = (0, 3, 5)
        print(
            " | ".join(
                c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            print("-+-".join("-" * w for w in widths))


def perf_line(table: Sequence[Row]) -> str:
    """Every keyed figure, then how many targets are met (`n/a` ones are not counted) and which are not.

    Every row with a target has a key, so `unmet` and `na` name each one."""
    keyed = [r for r in table if r.key]
    judged = [r for r in table if r.met is not None]
    unmet = [r.key for r in judged if not r.met]
    na = [r.key for r in keyed if r.met is None and r.target != "-"]
    values = " ".join(f"{r.key}={'n/a' if math.isnan(r.perf_value) else f'{r.perf_value:.4g}'}" for r in keyed)
    met = sum(1 for r in judged if r.met)
    return f"perf: {values} met={met}/{len(judged)} unmet={','.join(unmet) or '-'} na={','.join(na) or '-'}"


def print_details(
    cfg: Config, conv: Figures, stock: Figures, tuned: Figures, per_round: Sequence[Figures], soak: Soak
) -> None:
    ttl_s = int(JobStoreConfig.model_fields["result_ttl_s"].default)
    ttl_gb = conv["redis_bytes_per_job"] * 1500 * ttl_s / 1e9
    print()
    print("ratio × = Conveyor / baseline: > 1 is better for rates, worse for latencies, costs and RSS.")
    print(
        f"tuned arq (max_jobs 100, poll 10 ms, uvloop): drain {fmt(tuned['drain_rate'])} jobs/s, "
        f"worker CPU {tuned['worker_cpu_ms_per_job']:.2f} ms/job; stock arq drain {fmt(stock['drain_rate'])} jobs/s"
    )
    print(
        "arq client: arq's own enqueue_job under uvloop, 100 gathered at a time, no HTTP and no ledger "
        f"(stock arq's loop: {fmt(stock['enqueue_rate'])}/s)"
    )
    print(
        f"end to end: {fmt(conv['e2e_post_rate'])} POSTs/s for {cfg.e2e_s:g} s while the worker drains; "
        f"soak ({cfg.soak_s:g} s): {fmt(soak.figures.get('soak_rate', math.nan))} jobs/s"
    )
    print(
        f"batches: {cfg.batches} × {cfg.batch_size:,} system.echo jobs, {cfg.batch_concurrency} in flight, "
        f"no worker; p50 per batch {fmt(conv['batch_p50_ms'])} ms"
    )
    print(
        "scale-out: the same backlog of "
        f"{cfg.jobs:,} jobs per count, the queue paused until every process takes jobs: "
        + ", ".join(f"{n} → {fmt(conv[f'scale_{n}_rate'])} jobs/s" for n in cfg.scale_workers)
        + f" (nproc {nproc()})"
    )
    print(
        f"CPU per request: gateway {conv['gateway_cpu_ms_per_request']:.2f} ms, "
        f"bench client {conv['client_cpu_ms_per_request']:.2f} ms (same cores)"
    )
    print(
        f"worker RSS after draining {fmt(conv['worker_rss_mb'])} MB; gateway RSS after each round: "
        + ", ".join(f"{r['gateway_rss_mb']:.0f}" for r in per_round)
        + " MB"
    )
    print(
        "soak RSS (MB, after warm-up → end): "
        + ", ".join(f"{n} {fmt(b)} → {fmt(soak.after.get(n, math.nan))}" for n, b in soak.before.items())
    )
    print(f"Redis bytes kept per job × 1,500 jobs/s × RESULT_TTL_S {ttl_s:,} s (its default) ≈ {ttl_gb:,.2f} GB")
    print(
        f"fair share: pickup p50 of one owner's job behind another owner's high-priority backlog "
        f"({FLOOD_SLEEP_S:g} s jobs, more than the worker's slots): {fmt(conv['flood_pickup_p50_ms'])} ms"
    )
    print("pickup: Conveyor = ledger created_at → started_at (PostgreSQL clock, includes the insert's commit);")
    print("        stock arq = enqueue_job call → handler start (perf_counter, in-process, default poll 0.5 s).")
    print("drain/e2e/scale-out: Conveyor rates come from ledger timestamps; arq's from a burst worker's wall time.")
    print("Redis commands per job: the jobs server's counters over the POST and drain phases (enqueue, claim,")
    print("        run, finish, and the worker's own upkeep meanwhile); the cache server's (rate limits, progress,")
    print("        events) apart. On a shared jobs server other clients inflate it (the background load above).")


def print_rounds(stock: Sequence[Figures], tuned: Sequence[Figures], conv: Sequence[Figures]) -> None:
    """The spread behind the medians."""
    for n, (s, t, c) in enumerate(zip(stock, tuned, conv, strict=True), start=1):
        print(
            f"round {n}: conveyor drain {fmt(c['drain_rate'])}/s, e2e {fmt(c['e2e_rate'])}/s, "
            f"POST {fmt(c['enqueue_rate'])} req/s, batches {fmt(c['batch_rate'])} jobs/s, "
            f"pickup p50 {fmt(c['pickup_p50_ms'])} ms; "
            f"stock arq drain {fmt(s['drain_rate'])}/s, pickup p50 {fmt(s['pickup_p50_ms'])} ms; "
            f"tuned arq drain {fmt(t['drain_rate'])}/s, enqueue {fmt(t['enqueue_rate'])}/s"
        )


def print_facts(cfg: Config, versions: dict[str, str], background: float, stack: Stack) -> None:
    print(f"machine: nproc {nproc()} (cpu_count {os.cpu_count()}), {platform.platform()}")
    uvloop = package_version("uvloop") if uvloop_factory() else None
    print(
        f"python {platform.python_version()}, arq {package_version('arq')}, "
        f"uvloop {'yes ' + uvloop if uvloop else 'no'} (gateway, worker, bench client, tuned arq), "
        f"Redis {versions['redis']}, PostgreSQL {versions['postgresql']}"
    )
    print(
        f"sizes: {cfg.jobs} jobs/phase (stock arq drain {cfg.arq_jobs}), pickup samples {cfg.latency_samples} "
        f"(stock arq {cfg.arq_latency_samples}), {cfg.concurrency} in flight, medians of {cfg.rounds} rounds; "
        f"end to end {cfg.e2e_s:g} s a round, soak {cfg.soak_s:g} s once"
    )
    jobs = "the bench's own redis-server" if cfg.jobs_redis == "own" else "TEST_REDIS_URL (shared)"
    print(f"Redis: jobs (and the arq baselines) on {jobs}, the cache on the bench's own redis-server")
    print(f"Redis background load from other clients on the jobs server: {background:.0f} commands/s")
    inherited = stack.inherited()
    print(f"Conveyor settings inherited from the environment: {', '.join(inherited) if inherited else 'none'}")
