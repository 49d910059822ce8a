"""Metrics: every Prometheus Counter/Histogram/Gauge, created on an injected CollectorRegistry; names live here."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

NAMESPACE = "conveyor"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_JOB_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)
# No label value comes from a tenant: webhook hosts are chosen by users and owners are tenants, so circuits
# are only counted, by state (which owner and host a circuit is goes to the log, `webhook.circuit_open`).
# This process keeps at most this many circuits in mind (the least recently seen gives way).
MAX_TRACKED_CIRCUITS = 10_000
# A circuit this process has not seen for this long is no longer counted (a held job looks again well
# within it).
CIRCUIT_SERIES_TTL_S = 300.0
# The `state` label of `webhook_circuits`, by circuit state (workers.families.webhook.circuit.CircuitState);
# closed ones are not counted.
CIRCUIT_STATES = {1: "half_open", 2: "open"}
# The gateway's limiters that count in Redis db 0, or in process while it fails.
RATE_LIMITERS = ("principal", "auth_failures")


BACKGROUND_LOOPS: Final = ("reconciler", "retention", "schedules")
SCHEDULE_SKIPS: Final = ("queue_cap", "overlap", "invalid_job")


class Metrics:
    """One set of metrics per process; pass it down, never import a global."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "http_requests_total", "HTTP requests by route template, method and status.",
            ["route", "method", "status"], namespace=NAMESPACE, subsystem="gateway", registry=r,
        )  # fmt: skip
        self.http_latency = Histogram(
            "http_request_duration_seconds", "HTTP request latency by route template and method.",
            ["route", "method"], namespace=NAMESPACE, subsystem="gateway", buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.jobs_enqueued = Counter(
            "jobs_enqueued_total", "Jobs accepted into the ledger, by type.",
            ["type"], namespace=NAMESPACE, subsystem="gateway", registry=r,
        )  # fmt: skip
        self.enqueue_deferred = Counter(
            "enqueue_deferred_total", "Jobs in the ledger whose Redis enqueue failed (left to the reconciler).",
            namespace=NAMESPACE, subsystem="gateway", registry=r,
        )  # fmt: skip
        self.jobs = Counter(
            "jobs_total", "Job attempts by type and outcome (started, succeeded, failed, retried, expired, requeued).",
            ["type", "outcome"], namespace=NAMESPACE, subsystem="worker", registry=r,
        )  # fmt: skip
        self.job_duration = Histogram(
            "job_duration_seconds", "Handler run time per attempt, by type.",
            ["type"], namespace=NAMESPACE, subsystem="worker", buckets=_JOB_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "job_queue_wait_seconds", "Time from due to start of an attempt, by type.",
            ["type"], namespace=NAMESPACE, subsystem="worker", buckets=_JOB_BUCKETS, registry=r,
        )  # fmt: skip
        self.jobs_running = Gauge(
            "jobs_running", "Jobs running in this process.",
            namespace=NAMESPACE, subsystem="worker", registry=r,
        )  # fmt: skip
        self.cpu_tasks = Gauge(
            "cpu_tasks", "Tasks handed to this worker's CPU pool and not yet finished.",
            namespace=NAMESPACE, subsystem="worker", registry=r,
        )  # fmt: skip
        self.worker_up = Gauge(
            "up", "1 while this worker process is taking jobs.",
            ["queue"], namespace=NAMESPACE, subsystem="worker", registry=r,
        )  # fmt: skip
        self.reconciled = Counter(
            "reconciler_requeued_total", "Jobs the reconciler put back on Redis from the ledger.",
            namespace=NAMESPACE, subsystem="worker", registry=r,
        )  # fmt: skip
        self.background_item_failures = Counter(
            "background_item_failures_total", "Items a background pass skipped because they failed, by loop "
            "(reconciler, retention, schedules); the pass goes on past them.",
            ["loop"], namespace=NAMESPACE, subsystem="worker", registry=r,
        )  # fmt: skip
        self.schedule_fires_skipped = Counter(
            "schedule_fires_skipped_total", "Due schedule fire times that made no job, by reason (queue_cap, "
            "overlap, invalid_job).", ["reason"], namespace=NAMESPACE, subsystem="worker", registry=r,
        )  # fmt: skip
        for loop in BACKGROUND_LOOPS:  # every series exists from the start, at 0
            self.background_item_failures.labels(loop)
        for reason in SCHEDULE_SKIPS:
            self.schedule_fires_skipped.labels(reason)
        self.smtp = Counter(
            "smtp_sends_total", "SMTP send outcomes (sent, refused, transient, error).",
            ["outcome"], namespace=NAMESPACE, subsystem="worker", registry=r,
        )  # fmt: skip

        self.webhooks = Counter(
            "webhook_deliveries_total", "Webhook attempts by outcome (delivered, retry, rejected, refused, "
            "circuit_open).", ["outcome"], namespace=NAMESPACE, subsystem="worker", registry=r,
        )  # fmt: skip
        self.circuits = Gauge(
            "webhook_circuits", "Webhook circuits (one per owner and target host) that are not closed, by state "
            "(half_open, open), as this process last saw them.", ["state"], namespace=NAMESPACE, subsystem="worker",
            registry=r,
        )  # fmt: skip
        for name in CIRCUIT_STATES.values():  # both series exist from the start, at 0
            self.circuits.labels(name).set(0)
        self._circuits: OrderedDict[str, tuple[int, float]] = OrderedDict()  # circuit -> (state, last seen)
        self._circuits_swept = float("-inf")
        self.notifications = Counter(
            "notifications_total", "Notifications stored by notification.push.",
            namespace=NAMESPACE, subsystem="worker", registry=r,
        )  # fmt: skip
        self.uploads = Counter(
            "uploads_total", "Uploads by outcome (stored, too_large, over_quota, aborted).",
            ["outcome"], namespace=NAMESPACE, subsystem="gateway", registry=r,
        )  # fmt: skip
        self.upload_bytes = Counter(
            "upload_bytes_total", "Bytes stored by uploads.", namespace=NAMESPACE, subsystem="gateway", registry=r,
        )  # fmt: skip
        self.rate_limited = Counter(
            "rate_limited_total", "Requests refused with 429, by reason (principal, auth_failures, queue_cap, sse).",
            ["reason"], namespace=NAMESPACE, subsystem="gateway", registry=r,
        )  # fmt: skip
        self.rate_limit_fallback = Gauge(
            "rate_limit_fallback", "1 while a limiter (principal, auth_failures) counts in this process because "
            "Redis db 0 failed.", ["limiter"], namespace=NAMESPACE, subsystem="gateway", registry=r,
        )  # fmt: skip
        self.rate_limit_fallback_checks = Counter(
            "rate_limit_fallback_checks_total", "Requests a limiter (principal, auth_failures) checked in this "
            "process because Redis db 0 failed.", ["limiter"], namespace=NAMESPACE, subsystem="gateway", registry=r,
        )  # fmt: skip
        for limiter in RATE_LIMITERS:  # both series exist from the start, at 0
            self.rate_limit_fallback.labels(limiter).set(0)
            self.rate_limit_fallback_checks.labels(limiter)
        self.sse_streams = Gauge(
            "sse_streams", "Open event streams.", namespace=NAMESPACE, subsystem="gateway", registry=r,
        )  # fmt: skip

    def show_circuit(self, circuit: str, state: int, *, now: float | None = None) -> None:
        """Count one circuit (0 closed, 1 half-open, 2 open) in `webhook_circuits{state}`.

        A circuit not seen for CIRCUIT_SERIES_TTL_S is forgotten (nobody sends there any more, or another
        process closed it); past MAX_TRACKED_CIRCUITS, the one seen least recently gives way.
        """
        now = time.monotonic() if now is None else now
        self._forget_stale(now)
        self._forget_circuit(circuit)
        if state in CIRCUIT_STATES:
            if len(self._circuits) >= MAX_TRACKED_CIRCUITS:
                self._forget_circuit(next(iter(self._circuits)))
            self._circuits[circuit] = (state, now)
            self.circuits.labels(CIRCUIT_STATES[state]).inc()

    def _forget_circuit(self, circuit: str) -> None:
        known = self._circuits.pop(circuit, None)
        if known is not None:
            self.circuits.labels(CIRCUIT_STATES[known[0]]).dec()

    def _forget_stale(self, now: float) -> None:
        if now - self._circuits_swept < 1.0:
            return
        self._circuits_swept = now
        while self._circuits:
            circuit, (_, seen) = next(iter(self._circuits.items()))  # the least recently seen comes first
            if now - seen <= CIRCUIT_SERIES_TTL_S:
                break
            self._forget_circuit(circuit)

    def render(self) -> bytes:
        return generate_latest(self.registry)
