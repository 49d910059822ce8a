"""`dataset.analyze` through the real gateway and heavy worker: results, progress, failures, and a worker
whose event loop keeps serving other jobs while the analysis runs in its CPU pool."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from shared.jobs import JobSpec, Payload, Queue, Registry, Result
from shared.jobtypes import builtin_specs
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
async def analysis_in_a_frozen_pool(api: Api, worker: WorkerProcess, csv: Path) -> AsyncIterator[tuple[str, list[int]]]:
    """Start an analysis whose CPU-pool process is stopped (SIGSTOP), so it stays mid-analysis for as long
    as the test needs, however fast the machine; yields the job id and the pool's process ids once the
    pool holds the task. The processes are continued (SIGCONT) on the way out."""
    warm = await api.submit("dataset.analyze", {"upload_id": await upload(api, b"a\n1\n")})
    await api.wait_status(warm["id"], "succeeded")  # the pool's process now exists, idle
    children = pool_children()
    assert children, "the analysis ran in a separate process"
    for pid in children:
        os.kill(pid, signal.SIGSTOP)
    try:
        analysis = await api.submit("dataset.analyze", {"upload_id": await upload(api, csv)})

        async def in_the_pool() -> bool | None:
            return worker.metrics.registry.get_sample_value("conveyor_worker_cpu_tasks") == 1 or None

        await eventually(in_the_pool, within=30)
        yield analysis["id"], children
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


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
