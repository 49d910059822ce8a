"""Job family `dataset`: `dataset.analyze`, the engine run in the worker's CPU pool, progress relayed."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import tempfile
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from typing import Any, Final

from shared.core.errors import PermanentJobError, RetryableJobError
from shared.files import storage
from shared.jobtypes.dataset import DATASET_ANALYZE, DatasetPayload, DatasetResult
from workers.context import JobContext
from workers.families.dataset import engine
from workers.runtime import AnyHandler, bind

# How often the handler reads the engine's progress while the scan runs.
PROGRESS_POLL_S: Final = 0.5
# A broken CPU pool (a child died) is replaced at once; the job tries again after this long.
BROKEN_POOL_RETRY_S: Final = 2.0
_STEPS: Final = {
    engine.STAGE_INFERRING: "inferring schema",
    engine.STAGE_SCANNING: "scanning",
    engine.STAGE_RESCANNING: "rescanning",
}


@contextlib.contextmanager
def _progress_path() -> Iterator[str]:
    fd, path = tempfile.mkstemp(prefix="conveyor-progress-")
    os.close(fd)
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


async def run_engine(
    job: JobContext | None,
    executor: concurrent.futures.Executor,
    path: str,
    *,
    delimiter: str,
    has_header: bool,
    size: int,
) -> dict[str, Any]:
    """Run `engine.analyze` in `executor` (the worker's CPU pool), relaying its progress to `job`.

    Cancelled here (the job's timeout, a cancel, a shutdown), it cancels the pool's task too, which in the
    CPU pool kills the process running it: an abandoned scan must not keep a pool process from other jobs.
    """
    with _progress_path() as progress_path:
        work = partial(engine.analyze, path, delimiter=delimiter, has_header=has_header, progress_path=progress_path)
        task: concurrent.futures.Future[dict[str, Any]] = executor.submit(work)
        try:
            return await _relay(job, task, progress_path, size)
        finally:
            task.cancel()  # a no-op once the task is done


async def _relay(
    job: JobContext | None, task: concurrent.futures.Future[dict[str, Any]], progress_path: str, size: int
) -> dict[str, Any]:
    future = asyncio.wrap_future(task)
    last: tuple[float, float] | None = None
    while True:
        done, _ = await asyncio.wait({future}, timeout=PROGRESS_POLL_S)
        if done:
            return future.result()
        current = engine.read_progress(progress_path)
        if job is not None and current is not None and current != last:
            last = current
            stage, fraction = current
            await job.progress(
                percent=round(5 + 90 * fraction, 1) if stage else 0.0,
                step=_STEPS.get(stage, "scanning"),
                message=f"{fraction * size / 1e6:.1f} of {size / 1e6:.1f} MB",
            )


async def handle_analyze(job: JobContext, payload: DatasetPayload) -> DatasetResult:
    """Analyse one of the owner's uploads. Malformed or too wide files and unknown uploads fail at once; a
    CPU pool process that died (BrokenProcessPool) retries on its replacement."""
    ctx = job.worker
    stored = await storage.find_file(ctx.pg, ctx.settings.storage, "upload", payload.upload_id, owner=job.owner)
    if stored is None:
        raise PermanentJobError(f"no upload {payload.upload_id!r} of yours exists", type_name="UploadNotFound")
    await job.progress(percent=0.0, step="inferring schema", message=stored.filename)
    try:
        result = await run_engine(
            job, ctx.cpu, str(stored.path), delimiter=payload.delimiter, has_header=payload.has_header,
            size=stored.size,
        )  # fmt: skip
    except engine.TooManyColumns as exc:
        raise PermanentJobError(f"{stored.filename}: {exc}", type_name="TooManyColumns") from None
    except engine.MalformedCSV as exc:
        raise PermanentJobError(f"{stored.filename}: {exc}", type_name="MalformedCSV") from None
    except FileNotFoundError:
        raise PermanentJobError(f"upload {payload.upload_id!r} is gone", type_name="UploadNotFound") from None
    except BrokenProcessPool as exc:
        raise RetryableJobError(
            "the analysis process died; retrying on a fresh one", defer_s=BROKEN_POOL_RETRY_S, type_name="CpuPoolBroken"
        ) from exc
    await job.progress(percent=100.0, step="done", message=f"{result['rows']} rows")
    return DatasetResult.model_validate(result)


HANDLERS: list[AnyHandler] = [bind(DATASET_ANALYZE, handle_analyze)]
