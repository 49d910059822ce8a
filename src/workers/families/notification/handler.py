"""Job family `notification`: in-app notifications, stored in the ledger and pushed to the user's live streams."""

from __future__ import annotations

import logging

from shared.core.errors import RetryableJobError
from shared.infra.db import UNAVAILABLE_ERRORS
from shared.infra.redis import REDIS_ERRORS
from shared.jobtypes.notification import NOTIFICATION_PUSH, NotificationPayload, NotificationResult
from shared.ledger import notifications
from workers.context import JobContext
from workers.runtime import AnyHandler, bind

logger = logging.getLogger(__name__)


async def handle_push(job: JobContext, payload: NotificationPayload) -> NotificationResult:
    """Store the notification (once per job: a re-run finds the row an earlier run stored), then push it.

    Pushed on every run, so a run that stored it but died before the push still delivers it; a stream can
    thus see one notification twice, under the same id. A push lost to a cache outage is not retried: the
    notification is in the list, which is the record.
    """
    worker = job.worker
    try:
        record, created = await notifications.create(
            worker.pg, owner=payload.user, title=payload.title, body=payload.body, kind=payload.kind, job_id=job.job_id
        )
    except UNAVAILABLE_ERRORS as exc:
        raise RetryableJobError(f"the ledger is unavailable: {exc}", type_name=type(exc).__name__) from exc
    if created:
        worker.metrics.notifications.inc()
    try:
        await notifications.publish(worker.cache, record)
    except REDIS_ERRORS as exc:
        logger.warning("notification.push_failed", extra={"notification_id": record.id, "reason": type(exc).__name__})
    logger.info("notification.stored", extra={"notification_id": record.id, "new": created})
    return NotificationResult(notification_id=record.id)


HANDLERS: list[AnyHandler] = [bind(NOTIFICATION_PUSH, handle_push)]
