"""Job family `webhook`: JSON POSTs signed with their owner's own key, behind the SSRF guard and a circuit
breaker per owner and host.

Outcomes: 2xx succeeds; network errors, timeouts, 5xx, 408 and 429 retry (`Retry-After` honoured); other
4xx and 3xx fail. Redirects (301, 302, 303, 307, 308) are followed by hand, at most `MAX_REDIRECTS`, each
re-POSTing the same signed body through the same guard; the caller's own headers are dropped when a
redirect leaves the original origin. An address the guard refuses fails the job (`WebhookAddressRefused`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import logging
import random
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Final

import aiohttp
from yarl import URL

from shared.core.errors import JobDeferred, PermanentJobError, RetryableJobError
from shared.core.settings import WebhookConfig
from shared.infra.redis import REDIS_ERRORS
from shared.jobtypes.webhook import WEBHOOK_DELIVER, WebhookPayload, WebhookResult
from shared.ledger import records
from workers.context import JobContext
from workers.families.webhook import wire
from workers.families.webhook.circuit import Breaker, CircuitState, circuit
from workers.families.webhook.outbound import AddressRefused
from workers.runtime import AnyHandler, bind

logger = logging.getLogger(__name__)

MAX_REDIRECTS: Final = 3
REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
RETRY_STATUSES: Final = frozenset({408, 429})
# At most this much of a response is read (and discarded, but for a snippet kept for error messages).
MAX_RESPONSE_BYTES: Final = 64 * 1024
SNIPPET_BYTES: Final = 200
# A receiver's Retry-After is honoured within these bounds.
RETRY_AFTER_MIN_S: Final = 1.0
RETRY_AFTER_MAX_S: Final = 3600.0
# While another worker probes a half-open circuit, waiting jobs look again this often.
PROBE_POLL_S: Final = 1.0
# How long a half-open probe may hold the circuit beyond one attempt's timeout before another may probe.
PROBE_MARGIN_S: Final = 5.0


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    retry_after: str | None
    snippet: str


async def handle_deliver(job: JobContext, payload: WebhookPayload) -> WebhookResult:
    """POST the event once; the delivery id (and so the body) is the same on every attempt of the job."""
    worker, config = job.worker, job.worker.settings.webhook
    url = URL(str(payload.url))
    host = (url.host or "").lower()
    if any(c in payload.event for c in "\r\n\0"):
        raise PermanentJobError("`event` must be a single line", type_name="WebhookInvalidEvent")
    breaker = Breaker(
        failures=config.breaker_failures, open_s=config.breaker_open_s, probe_s=config.timeout_s + PROBE_MARGIN_S
    )
    target = circuit(job.owner, host)
    await _admit(job, breaker, host, target)
    record = await records.get_job(worker.pg, job.job_id)
    created_at = record.created_at if record is not None else dt.datetime.now(dt.UTC)
    delivery = wire.delivery_id(job.job_id)
    body = wire.body(delivery, payload.event, payload.data, created_at, owner=job.owner)
    started = time.perf_counter()
    headers = _headers(config, payload, delivery, body, owner=job.owner)
    reply = await _attempt(job, breaker, host, target, url, headers, body)
    duration_ms = round((time.perf_counter() - started) * 1000, 3)
    if 200 <= reply.status < 300:
        await _note(job, host, breaker.succeeded(worker.cache, target), target)
        worker.metrics.webhooks.labels("delivered").inc()
        logger.info("webhook.delivered", extra={"status_code": reply.status, "duration_ms": duration_ms})
        return WebhookResult(status_code=reply.status, duration_ms=duration_ms, attempt=job.attempt)
    message = f"the receiver answered {reply.status}" + (f": {reply.snippet}" if reply.snippet else "")
    if reply.status >= 500 or reply.status in RETRY_STATUSES:
        await _note(job, host, breaker.failed(worker.cache, target), target)
        worker.metrics.webhooks.labels("retry").inc()
        raise RetryableJobError(message, defer_s=retry_after_s(reply.retry_after), type_name="WebhookHTTPError")
    await _note(job, host, breaker.succeeded(worker.cache, target), target)  # the host answered: it is up
    worker.metrics.webhooks.labels("rejected").inc()
    raise PermanentJobError(message, type_name="WebhookHTTPError")


def _headers(
    config: WebhookConfig, payload: WebhookPayload, delivery: str, body: bytes, *, owner: str
) -> dict[str, str]:
    """Conveyor's headers over the caller's; signed with the owner's own key when WEBHOOK_SECRET is set."""
    headers = {
        **payload.headers,
        "Content-Type": "application/json",
        "User-Agent": wire.user_agent(),
        wire.DELIVERY_HEADER: delivery,
        wire.EVENT_HEADER: payload.event,
        wire.OWNER_HEADER: wire.owner_header(owner),
    }
    if config.secret is not None and config.secret.get_secret_value():
        headers.update(wire.signed_headers(config.secret.get_secret_value(), owner, body))
    return headers


async def _admit(job: JobContext, breaker: Breaker, host: str, target: str) -> None:
    """Let the attempt through unless the host's circuit is open; a held job waits without using an attempt."""
    metrics = job.worker.metrics
    try:
        permit = await breaker.acquire(job.worker.cache, target)
    except REDIS_ERRORS as exc:  # fail open: the cache is disposable, deliveries are not
        logger.warning("webhook.circuit_unavailable", extra={"host": host, "reason": type(exc).__name__})
        return
    metrics.show_circuit(target, permit.state)
    if permit.allowed:
        return
    metrics.webhooks.labels("circuit_open").inc()
    wait_s = min(permit.wait_s, PROBE_POLL_S) if permit.state is CircuitState.HALF_OPEN else permit.wait_s
    wait_s = max(wait_s, 0.05) * random.uniform(1.0, 1.25)  # noqa: S311 - spreading wake-ups, not cryptography
    raise JobDeferred(f"the circuit for {host} is {permit.state.name.lower()}", wait_s=wait_s)


async def _note(job: JobContext, host: str, update: Awaitable[CircuitState], target: str) -> None:
    try:
        state = await update
    except REDIS_ERRORS as exc:
        logger.warning("webhook.circuit_unavailable", extra={"host": host, "reason": type(exc).__name__})
        return
    if state is CircuitState.OPEN:
        logger.warning("webhook.circuit_open", extra={"host": host})
    job.worker.metrics.show_circuit(target, state)


async def _attempt(
    job: JobContext, breaker: Breaker, host: str, target: str, url: URL, headers: dict[str, str], body: bytes
) -> Reply:
    """One attempt (redirects included) within WEBHOOK_TIMEOUT_S; transport failures become job errors."""
    worker = job.worker
    try:
        async with asyncio.timeout(worker.settings.webhook.timeout_s):
            return await _post(worker.http, url, headers, body)
    except aiohttp.ClientConnectorError as exc:
        if isinstance(exc.os_error, AddressRefused):
            worker.metrics.webhooks.labels("refused").inc()
            raise PermanentJobError(str(exc.os_error), type_name="WebhookAddressRefused") from exc
        failure: RetryableJobError = RetryableJobError(f"could not connect: {exc}", type_name="WebhookConnectionError")
    except aiohttp.InvalidURL as exc:
        worker.metrics.webhooks.labels("rejected").inc()
        raise PermanentJobError(f"the URL cannot be used: {exc}", type_name="WebhookInvalidUrl") from exc
    except TimeoutError:
        failure = RetryableJobError(
            f"no response within {worker.settings.webhook.timeout_s:g}s", type_name="WebhookTimeout"
        )
    except (aiohttp.ClientError, OSError) as exc:
        failure = RetryableJobError(f"the request failed: {type(exc).__name__}: {exc}", type_name="WebhookNetworkError")
    await _note(job, host, breaker.failed(worker.cache, target), target)
    worker.metrics.webhooks.labels("retry").inc()
    raise failure


async def _post(session: aiohttp.ClientSession, url: URL, headers: dict[str, str], body: bytes) -> Reply:
    """POST, following up to MAX_REDIRECTS redirects by hand (each hop goes through the connector's guard)."""
    origin = url.origin()
    for _ in range(MAX_REDIRECTS + 1):
        async with session.post(url, data=body, headers=headers, allow_redirects=False) as resp:
            snippet = await _drain(resp)
            location = resp.headers.get("Location")
            if resp.status not in REDIRECTS:
                return Reply(resp.status, resp.headers.get("Retry-After"), snippet)
        if not location:
            raise PermanentJobError(f"redirect {resp.status} without a Location", type_name="WebhookRedirect")
        try:
            url = url.join(URL(location))
        except ValueError as exc:
            raise PermanentJobError("redirect to a malformed Location", type_name="WebhookRedirect") from exc
        if url.scheme not in ("http", "https"):
            raise PermanentJobError(f"redirect to a {url.scheme!r} URL", type_name="WebhookRedirect")
        if url.origin() != origin:  # the caller's headers (credentials, say) were meant for the first origin only
            headers = {k: v for k, v in headers.items() if k.lower() in _OWN_HEADERS}
    raise PermanentJobError(f"more than {MAX_REDIRECTS} redirects", type_name="WebhookRedirect")


_OWN_HEADERS: Final = frozenset(
    h.lower()
    for h in (
        "Content-Type",
        "User-Agent",
        wire.DELIVERY_HEADER,
        wire.EVENT_HEADER,
        wire.OWNER_HEADER,
        wire.SIGNATURE_HEADER,
    )
)


async def _drain(resp: aiohttp.ClientResponse) -> str:
    """Read at most MAX_RESPONSE_BYTES (a larger reply closes the connection) and keep a short snippet."""
    kept, seen = b"", 0
    while seen < MAX_RESPONSE_BYTES:
        chunk = await resp.content.readany()
        if not chunk:
            break
        seen += len(chunk)
        kept += chunk[: SNIPPET_BYTES - len(kept)]
    return kept.decode("utf-8", errors="replace").strip()


def retry_after_s(value: str | None, *, now: dt.datetime | None = None) -> float | None:
    """`Retry-After` (delay seconds or an HTTP date) as seconds within bounds; None when absent or invalid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        delay = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        delay = (when - (now or dt.datetime.now(dt.UTC))).total_seconds()
    return min(max(delay, RETRY_AFTER_MIN_S), RETRY_AFTER_MAX_S)


HANDLERS: list[AnyHandler] = [bind(WEBHOOK_DELIVER, handle_deliver)]
