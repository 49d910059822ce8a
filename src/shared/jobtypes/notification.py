"""`notification.push`: an in-app notification stored for a user and pushed to their live stream."""

from __future__ import annotations

from pydantic import Field

from shared.jobtypes.spec import Backoff, JobSpec, Payload, Queue, Result


class NotificationPayload(Payload):
    user: str = Field(min_length=1, max_length=200, description="The principal (`sub`) it is for.")
    title: str = Field(min_length=1, max_length=200)
    body: str = Field("", max_length=4000)
    kind: str = Field("info", min_length=1, max_length=50, pattern=r"^[A-Za-z0-9_.\-]+$")


class NotificationResult(Result):
    notification_id: str


NOTIFICATION_PUSH: JobSpec[NotificationPayload, NotificationResult] = JobSpec(
    name="notification.push",
    description="Store a notification for `user` and push it to their stream (idempotent on the job id).",
    queue=Queue.DEFAULT,
    payload_model=NotificationPayload,
    result_model=NotificationResult,
    max_attempts=8,
    backoff=Backoff(kind="exponential", base_s=0.5, max_s=60.0, jitter=True),
    timeout_s=15.0,
    max_timeout_s=60.0,
    on_behalf_of="user",
)
