"""`dataset.analyze` through the real gateway and heavy worker: results, progress, failures, and a worker
whose event loop keeps serving other jobs while the analysis runs in its CPU pool."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from shared.jobtypes import builtin_specs
from shared.jobtypes.dataset import MAX_COLUMNS
from shared.jobtypes.spec import JobSpec, Payload, Queue, Registry, Result
from support.helpers import eventually
from support.stack import Api, Conn, Services, StartWorker, gateway_settings, running_gateway
from workers.context import JobContext
from workers.families import builtin_handlers
from workers.processes import WorkerProcess
from workers.runtime import AnyHandler, bind

BIG_CSV_MB = 120


class PingPayload(Payload):
    pass


class PingResult(Result):
    pong: bool


async def handle_ping(job: JobContext, payload: PingPayload) -> PingResult:
    return PingResult(pong=True)


# A type on the heavy queue: it can only run on the event loop of the worker that runs the analysis.
PING = JobSpec(name="test.ping", description="answers at once", queue=Queue.HEAVY, payload_model=PingPayload,
               result_model=PingResult)  # fmt: skip
REGISTRY = Registry([*builtin_specs(), PING])
HANDLERS: dict[str, AnyHandler] = {**builtin_handlers(), PING.name: bind(PING, handle_ping)}


def write_csv(path: Path, megabytes: float) -> Path:
    """Five mixed columns (integer, float, boolean, date, string), about `megabytes` MB."""
    rows = max(int(megabytes * 1e6 / 48), 1)
    frame = pl.select(pl.int_range(0, rows, eager=True).alias("id")).with_columns(
        ((pl.col("id") * 7919 % 100_003) / 100.0).alias("amount"),
        (pl.col("id") % 3 == 0).alias("active"),
        (pl.lit(dt.date(2020, 1, 1)) + pl.duration(days=pl.col("id") % 2000)).alias("day"),
        pl.format("customer-{}", pl.col("id") * 2_654_435_761 % 1_000_003).alias("name"),
    )
    frame.write_csv(path)
    return path


@pytest.fixture(scope="module")
def big_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_csv(tmp_path_factory.mktemp("datasets") / "big.csv", BIG_CSV_MB)


@pytest.fixture
async def heavy(start_worker: StartWorker) -> WorkerProcess:
    return await start_worker("heavy", handlers=HANDLERS, registry=REGISTRY)


@pytest.fixture
async def stack(services: Services, pg: Conn, heavy: WorkerProcess) -> AsyncIterator[Api]:
    async with running_gateway(gateway_settings(services), registry=REGISTRY) as api:
        yield api


async def upload(api: Api, body: bytes | Path, *, as_: str = "alice") -> str:
    data: Any = body.open("rb") if isinstance(body, Path) else body
    try:
        status, resource, _ = await api.request(
            "POST",
            "/api/v1/uploads",
            as_=as_,
            data=data,
            headers={"Content-Type": "text/csv", "Content-Disposition": 'attachment; filename="data.csv"'},
        )
    finally:
        if isinstance(body, Path):
            data.close()
    assert status == 201, resource
    return str(resource["id"])


async def test_an_uploaded_csv_is_analysed(stack: Api) -> None:
    upload_id = await upload(stack, b"city,people,founded\nParis,2100000,0300-01-01\nLyon,,1000-06-01\nNice,340000,\n")
    job = await stack.submit("dataset.analyze", {"upload_id": upload_id})

    done = await stack.wait_status(job["id"], "succeeded")

    result = done["result"]
    assert result["rows"] == 3
    city, people, founded = result["columns"]
    assert (city["type"], city["min"], city["max"], city["distinct_estimate"]) == ("string", "Lyon", "Paris", 3)
    assert (people["type"], people["count"], people["nulls"]) == ("integer", 2, 1)
    assert (people["min"], people["max"], people["mean"]) == (340000, 2100000, 1220000.0)
    assert (founded["type"], founded["min"], founded["nulls"]) == ("date", "0300-01-01", 1)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"a,b\n1,2\n3,4,5\n", "more fields than the header"),
        (b"a,b\n1,\xff\n", "not valid UTF-8"),
    ],
)
async def test_a_malformed_csv_fails_at_once(stack: Api, content: bytes, reason: str) -> None:
    upload_id = await upload(stack, content)
    job = await stack.submit("dataset.analyze", {"upload_id": upload_id})

    failed = await stack.wait_status(job["id"], "failed")

    assert failed["attempts"] == 1, "no retry can fix a malformed file"
    assert failed["error"]["type"] == "MalformedCSV"
    assert failed["error"]["retryable"] is False
    assert reason in failed["error"]["message"]


async def test_a_csv_wider_than_the_column_cap_fails_at_once(stack: Api) -> None:
    width = MAX_COLUMNS + 1
    header, row = ",".join(f"c{i}" for i in range(width)), ",".join("1" for _ in range(width))
    job = await stack.submit("dataset.analyze", {"upload_id": await upload(stack, f"{header}\n{row}\n".encode())})

    failed = await stack.wait_status(job["id"], "failed", "succeeded")

    assert failed["status"] == "failed", "no analysis of a file that wide"
    assert (failed["error"]["type"], failed["attempts"], failed["error"]["retryable"]) == ("TooManyColumns", 1, False)
    assert f"too many columns ({width} > {MAX_COLUMNS})" in failed["error"]["message"]


async def test_an_unknown_or_someone_elses_upload_fails_as_not_found(stack: Api) -> None:
    bobs = await upload(stack, b"a\n1\n", as_="bob")
    for upload_id in (bobs, "no-such-upload"):
        job = await stack.submit("dataset.analyze", {"upload_id": upload_id})

        failed = await stack.wait_status(job["id"], "failed")

        assert (failed["error"]["type"], failed["attempts"]) == ("UploadNotFound", 1)


def pool_children() -> list[int]:
    """This test process's CPU-pool children (the in-process heavy worker's analysis processes)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


@contextlib.asynccontextmanager
async def frozen_pool(api: Api) -> AsyncIterator[list[int]]:
    """The heavy worker's CPU-pool processes, started by a small analysis and then stopped (SIGSTOP), so the
    next analysis stays in the pool for as long as the test needs, however fast the machine. The processes
    are continued (SIGCONT) on the way out."""
    warm = await api.submit("dataset.analyze", {"upload_id": await upload(api, b"a\n1\n")})
    await api.wait_status(warm["id"], "succeeded")  # the pool's process now exists, idle
    children = pool_children()
    assert children, "the analysis ran in a separate process"
    for pid in children:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield children
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


@contextlib.asynccontextmanager
async def analysis_in_a_frozen_pool(
    api: Api, worker: WorkerProcess, csv: bytes | Path
) -> AsyncIterator[tuple[str, list[int]]]:
    """Start an analysis in a frozen pool (see `frozen_pool`); yields the job id and the pool's process ids
    once the pool holds the task."""
    async with frozen_pool(api) as children:
        analysis = await api.submit("dataset.analyze", {"upload_id": await upload(api, csv)})

        async def in_the_pool() -> bool | None:
            return worker.metrics.registry.get_sample_value("conveyor_worker_cpu_tasks") == 1 or None

        await eventually(in_the_pool, within=30)
        yield analysis["id"], children


async def test_the_worker_keeps_serving_jobs_while_a_large_analysis_runs(
    stack: Api, heavy: WorkerProcess, big_csv: Path
) -> None:
    async with analysis_in_a_frozen_pool(stack, heavy, big_csv) as (analysis_id, _):
        ping = await stack.submit("test.ping", {})
        pong = await stack.wait_status(ping["id"], "succeeded", within=60)
        meanwhile = await stack.job(analysis_id)
    done = await stack.wait_status(analysis_id, "succeeded", within=100)

    assert meanwhile["status"] == "running", "the ping was answered while the analysis was still running"
    assert pong["finished_at"] < done["finished_at"]
    assert done["result"]["rows"] == pl.scan_csv(big_csv).select(pl.len()).collect().item()
    assert [c["type"] for c in done["result"]["columns"]] == ["integer", "float", "boolean", "date", "string"]
    assert heavy.metrics.registry.get_sample_value("conveyor_worker_cpu_tasks") == 0


async def test_an_analysis_process_that_dies_is_retried_on_a_fresh_one(
    stack: Api, heavy: WorkerProcess, big_csv: Path
) -> None:
    async with analysis_in_a_frozen_pool(stack, heavy, big_csv) as (analysis_id, children):
        for pid in children:
            os.kill(pid, signal.SIGKILL)
    done = await stack.wait_status(analysis_id, "succeeded", within=100)

    assert done["attempts"] == 2
    assert [e["type"] for e in done["errors"]] == ["CpuPoolBroken"]
    assert done["result"]["rows"] > 0


def gone(pids: list[int]) -> bool:
    return not any(Path(f"/proc/{pid}").exists() for pid in pids)


async def pools_are_gone(pids: list[int]) -> bool | None:
    return gone(pids) or None


# In a frozen pool (see `frozen_pool`) an analysis of any size stays running until it is stopped.
SMALL_CSV = b"n\n1\n2\n3\n"


async def test_a_cancelled_analysis_stops_its_process_and_the_next_runs_on_a_fresh_one(
    stack: Api, heavy: WorkerProcess
) -> None:
    async with analysis_in_a_frozen_pool(stack, heavy, SMALL_CSV) as (analysis_id, children):
        status, cancelled, _ = await stack.request("POST", f"/api/v1/jobs/{analysis_id}/cancel")
        assert (status, cancelled["status"]) == (200, "cancelled"), cancelled

        await eventually(partial(pools_are_gone, children), within=30)
    after = await stack.submit("dataset.analyze", {"upload_id": await upload(stack, b"a\n1\n2\n")})
    done = await stack.wait_status(after["id"], "succeeded", within=60)

    assert done["result"]["rows"] == 2
    assert pool_children(), "the pool has a process again"
    assert not set(pool_children()) & set(children), "a fresh one"
    assert (await stack.job(analysis_id))["status"] == "cancelled"


async def test_an_analysis_past_its_timeout_stops_its_process(stack: Api) -> None:
    upload_id = await upload(stack, SMALL_CSV)
    async with frozen_pool(stack) as children:
        job = await stack.submit("dataset.analyze", {"upload_id": upload_id}, timeout_s=1, max_attempts=1)
        failed = await stack.wait_status(job["id"], "failed", within=30)

        assert failed["error"]["type"] == "JobTimeout"
        await eventually(partial(pools_are_gone, children), within=30)
    again = await stack.submit("dataset.analyze", {"upload_id": upload_id})
    done = await stack.wait_status(again["id"], "succeeded", within=60)

    assert done["result"]["rows"] == 3, "a fresh process ran the next one"


async def test_an_owner_runs_one_analysis_at_a_time_and_others_are_not_held(stack: Api, heavy: WorkerProcess) -> None:
    async with analysis_in_a_frozen_pool(stack, heavy, SMALL_CSV) as (first_id, children):
        second = await stack.submit("dataset.analyze", {"upload_id": await upload(stack, b"a\n1\n")})
        bobs = await stack.submit(
            "dataset.analyze", {"upload_id": await upload(stack, b"b\n2\n", as_="bob")}, as_="bob"
        )

        await stack.wait_status(bobs["id"], "running", as_="bob")  # in the CPU pool, behind alice's first
        assert (await stack.job(second["id"]))["status"] == "queued", "alice's second waits for her first"
        assert (await stack.job(first_id))["status"] == "running"
        await stack.request("POST", f"/api/v1/jobs/{first_id}/cancel")
        await eventually(partial(pools_are_gone, children), within=30)  # stopped while it ran
    bob_done = await stack.wait_status(bobs["id"], "succeeded", within=60, as_="bob")
    second_done = await stack.wait_status(second["id"], "succeeded", within=60)

    assert (bob_done["attempts"], second_done["attempts"]) == (1, 1), "waiting for a turn uses no attempt"
    assert second_done["started_at"] > bob_done["started_at"]
