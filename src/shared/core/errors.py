"""ServiceError hierarchy (stable `code` per class) plus job errors; no HTTP knowledge."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar


class ServiceError(Exception):
    """Base of every error the service reports to a caller."""

    code: ClassVar[str] = "service_error"

    def __init__(
        self,
        message: str,
        *,
        details: Mapping[str, Any] | None = None,
        errors: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details: Mapping[str, Any] = details or {}
        self.errors: Sequence[Mapping[str, Any]] | None = errors


class BadRequest(ServiceError):
    code = "bad_request"


class InvalidInput(ServiceError):
    code = "invalid_input"


class NotFound(ServiceError):
    code = "not_found"


class Conflict(ServiceError):
    code = "conflict"


class Unauthenticated(ServiceError):
    code = "unauthenticated"


class PermissionDenied(ServiceError):
    code = "permission_denied"


class StorageQuotaExceeded(ServiceError):
    """A stored file would take its owner past STORAGE_QUOTA_BYTES (uploads and artifacts together)."""

    code = "storage_quota_exceeded"

    def __init__(self, message: str, *, used: int, quota: int) -> None:
        super().__init__(message)
        self.used = used
        self.quota = quota


class UnsupportedMediaType(ServiceError):
    code = "unsupported_media_type"


class RateLimited(ServiceError):
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DependencyUnavailable(ServiceError):
    """Redis, PostgreSQL or SMTP could not be reached."""

    code = "dependency_unavailable"


class JobError(Exception):
    """Base of the errors a job handler raises to steer retries."""

    retryable: ClassVar[bool] = True

    @property
    def type_name(self) -> str:
        return type(self).__name__


class RetryableJobError(JobError):
    """A transient failure: the runtime retries with the type's backoff (or `defer_s` when given)."""

    retryable = True

    def __init__(self, message: str, *, defer_s: float | None = None, type_name: str | None = None) -> None:
        super().__init__(message)
        self.defer_s = defer_s
        self._type_name = type_name

    @property
    def type_name(self) -> str:
        return self._type_name or type(self).__name__


class PermanentJobError(JobError):
    """A failure no retry can fix (bad input, refused recipient): the job fails now."""

    retryable = False

    def __init__(self, message: str, *, type_name: str | None = None) -> None:
        super().__init__(message)
        self._type_name = type_name

    @property
    def type_name(self) -> str:
        return self._type_name or type(self).__name__


class JobDeferred(Exception):
    """Not a failure: the job cannot run yet (e.g. its webhook host's circuit is open). It goes back to the
    queue for `wait_s` and the attempt is given back, as for a job held by its type's limits."""

    def __init__(self, message: str, *, wait_s: float) -> None:
        super().__init__(message)
        self.wait_s = wait_s
