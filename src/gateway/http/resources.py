"""The public JSON shape of resources (docs/api.md), rendered from ledger records."""

from __future__ import annotations

from typing import Any, Final

from shared.core.json import rfc3339
from shared.core.status import JobStatus
from shared.infra.sealing import redact
from shared.ledger.records import JobRecord, JobSummary

API = "/api/v1"
# The statuses whose resource shows the last attempt's `error` (a succeeded or waiting job has none).
WITH_ERROR: Final[tuple[JobStatus, ...]] = ("failed", "retrying", "cancelled")


def job_url(job_id: str) -> str:
    return f"{API}/jobs/{job_id}"


def job_summary(job: JobSummary, *, progress: dict[str, Any] | None = None) -> dict[str, Any]:
    """A job as a list shows it: the resource less `payload`, `result` and `errors` (GET the job for those)."""
    url = job_url(job.id)
    return {
        "id": job.id,
        "type": job.type,
        "queue": job.queue,
        "status": job.status,
        "priority": job.priority,
        "owner": job.owner,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "timeout_s": job.timeout_s,
        "progress": progress,
        "error": job.error if job.status in WITH_ERROR else None,
        "batch_id": job.batch_id,
        "idempotency_key": job.idempotency_key,
        "created_at": rfc3339(job.created_at),
        "scheduled_for": rfc3339(job.scheduled_for),
        "expires_at": rfc3339(job.expires_at),
        "started_at": rfc3339(job.started_at),
        "finished_at": rfc3339(job.finished_at),
        "links": {"self": url, "events": f"{url}/events"},
    }


def job_resource(job: JobRecord, *, progress: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole job: its summary, with the payload as stored (sealed values show "[redacted]", never
    opened), the result of a success and every recorded attempt's error."""
    body = job_summary(job, progress=progress)
    links = body.pop("links")
    body.update(
        payload=redact(job.payload),
        result=job.result if job.status == "succeeded" else None,
        errors=job.error_history,
        links=links,
    )
    return body
