"""Job family `report`: ledger statistics as a CSV or JSON artifact, optionally mailed (`report.generate`)."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging

from pydantic import HttpUrl

from shared.core.errors import Conflict, InvalidInput, PermanentJobError, RetryableJobError, StorageQuotaExceeded
from shared.core.json import utcnow
from shared.files import storage
from shared.infra.db import UNAVAILABLE_ERRORS
from shared.jobtypes.report import REPORT_GENERATE, ReportPayload, ReportResult
from shared.ledger import submission
from workers.context import JobContext
from workers.families.report import query
from workers.runtime import AnyHandler, bind

logger = logging.getLogger(__name__)

# Rows encoded and written per chunk (and per progress report).
CHUNK_ROWS = 500
MAIL_ENQUEUE_TIMEOUT_S = 2.0


def artifact_url(artifact_id: str) -> str:
    return f"/api/v1/artifacts/{artifact_id}"


def _public(base: HttpUrl | None, path: str) -> str:
    """`path` under PUBLIC_URL, for a link read outside the API (mail); as it is when that is unset."""
    return str(base).rstrip("/") + path if base is not None else path


async def handle_generate(job: JobContext, payload: ReportPayload) -> ReportResult:
    """Stream the owner's ledger statistics into the job's artifact (a re-run replaces it under the same id),
    then enqueue the mail when asked. A ledger outage mid-report fails the attempt and the report is
    written again from the start by the retry; a report past the owner's storage quota fails for good."""
    now = utcnow()
    start, end = query.period_bounds(payload.period, payload.from_, payload.to, now=now)
    encoder = query.encoder_for(payload.format, owner=job.owner, start=start, end=end, generated_at=now)
    await job.progress(percent=0, step="querying")
    try:
        stored, count = await _write(job, encoder, start, end)
    except UNAVAILABLE_ERRORS as exc:  # PostgreSQL (or the storage volume) went away: a retry starts afresh
        raise RetryableJobError(
            f"the report was interrupted ({type(exc).__name__}: {exc})", type_name="ReportInterrupted"
        ) from exc
    except StorageQuotaExceeded as exc:  # retrying cannot help until the owner deletes files
        raise PermanentJobError(str(exc), type_name="StorageQuotaExceeded") from exc
    artifact_id = stored.id
    logger.info("report.written", extra={"rows": count, "bytes": stored.size})
    if payload.email_to:
        await job.progress(percent=95, step="mailing", message=f"{count} rows")
        await _enqueue_mail(job, payload, artifact_id)
    await job.progress(percent=100, step="done", message=f"{count} rows")
    return ReportResult(artifact_id=artifact_id, url=artifact_url(artifact_id), rows=count)


async def _write(
    job: JobContext, encoder: query.Encoder, start: dt.datetime, end: dt.datetime
) -> tuple[storage.StoredFile, int]:
    """Stream the rows into the job's artifact (a re-run replaces it under the same id); (file, rows)."""
    worker = job.worker
    count = 0
    async with storage.write_artifact(
        worker.pg, worker.settings.storage, owner=job.owner, job_id=job.job_id,
        filename=f"report-{end:%Y-%m-%d}.{encoder.extension}", content_type=encoder.content_type,
    ) as writer:  # fmt: skip
        await writer.write(encoder.begin())
        chunk: list[query.ReportRow] = []
        rows = query.stream_rows(worker.pg, owner=job.owner, start=start, end=end)
        async with contextlib.aclosing(rows):
            async for row in rows:
                chunk.append(row)
                if len(chunk) >= CHUNK_ROWS:
                    count += len(chunk)
                    await writer.write(encoder.rows(chunk))
                    chunk = []
                    await job.progress(step="writing", message=f"{count} rows")
        count += len(chunk)
        await writer.write(encoder.rows(chunk) + encoder.end())
    return writer.stored, count


def _period_label(payload: ReportPayload) -> str:
    if payload.period is not None:
        return f"last {payload.period}"
    assert payload.from_ is not None  # noqa: S101 - the payload model requires both bounds
    assert payload.to is not None  # noqa: S101
    return f"{payload.from_.isoformat()} to {payload.to.isoformat()}"


async def _enqueue_mail(job: JobContext, payload: ReportPayload, artifact_id: str) -> None:
    """An `email.send` job of the same owner with the artifact attached, keyed on this job's id: a retry of
    the report finds the mail already recorded and enqueues nothing (the request, built only from the
    payload and ids, is the same on every attempt)."""
    worker = job.worker
    request = submission.JobRequest(
        type="email.send",
        payload={
            "to": list(payload.email_to),
            "subject": "Your Conveyor report is ready",
            "template": "report-ready",
            "context": {
                "report_id": job.job_id, "period": _period_label(payload), "format": payload.format,
                "url": _public(worker.settings.storage.public_url, artifact_url(artifact_id)),
            },
            "attachments": [{"artifact_id": artifact_id}],
        },
        idempotency_key=f"report-mail:{job.job_id}",
    )  # fmt: skip
    try:
        new = submission.prepare(request, worker.registry, sealer=worker.sealer, owner=job.owner, request_id=None)
        record, created, _ = await submission.submit(
            worker.pg, worker.jobs_redis, new, enqueue_timeout_s=MAIL_ENQUEUE_TIMEOUT_S
        )
    except InvalidInput as exc:
        raise PermanentJobError(f"the report's mail is not a valid email.send job: {exc}") from exc
    except Conflict:  # an earlier attempt recorded a mail for this report
        logger.info("report.mail_already_enqueued")
        return
    logger.info("report.mail_enqueued", extra={"mail_job_id": record.id, "newly_enqueued": created})


HANDLERS: list[AnyHandler] = [bind(REPORT_GENERATE, handle_generate)]
