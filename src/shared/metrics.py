"""Metrics: every Prometheus Counter/Histogram/Gauge, created on an injected CollectorRegistry; names live here."""

from __future__ import annotations

import contextlib
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

NAMESPACE = "conveyor"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_JOB_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)
# Webhook hosts are chosen by users: at most this many `circuit_breaker_state{host}` series, and only
# for hosts with a circuit that is not closed (a host whose circuits all close loses its series).
MAX_CIRCUIT_HOSTS = 100
# A circuit this process has not seen for this long drops out of the metric (a held job looks again
# well within it).
CIRCUIT_SERIES_TTL_S = 300.0
# The gateway's limiters that count in Redis db 0, or in process while it fails.
RATE_LIMITERS = ("principal", "auth_failures")


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
        self.smtp = Counter(
            "smtp_sends_total", "SMTP send outcomes (sent, refused, transient, error).",
            ["outcome"], namespace=NAMESPACE, subsystem="worker", registry=r,
        )  # fmt: skip

        self.webhooks = Counter(
            "webhook_deliveries_total", "Webhook attempts by outcome (delivered, retry, rejected, refused, "
            "circuit_open).", ["outcome"], namespace=NAMESPACE, subsystem="worker", registry=r,
        )  # fmt: skip
        self.circuit_state = Gauge(
            "circuit_breaker_state", "Webhook circuits to a host as last seen here, the worst of its owners' "
            "(1 half-open, 2 open); hosts whose circuits are all closed are not listed.",
            ["host"], namespace=NAMESPACE, subsystem="worker", registry=r,
        )  # fmt: skip
        self._circuits: dict[str, dict[str, tuple[int, float]]] = {}  # host -> circuit -> (state, last seen)
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

    def show_circuit(self, host: str, circuit: str, state: int, *, now: float | None = None) -> None:
        """Record one circuit's state (0 closed, 1 half-open, 2 open) in `circuit_breaker_state{host}`.

        A circuit not seen for CIRCUIT_SERIES_TTL_S is forgotten (nobody sends there any more, or another
        process closed it); when MAX_CIRCUIT_HOSTS hosts are shown, the one seen least recently gives way.
        """
        now = time.monotonic() if now is None else now
        self._forget_stale(now)
        circuits = self._circuits.get(host)
        if state == 0:
            if circuits is not None:
                circuits.pop(circuit, None)
        else:
            if circuits is None:
                if len(self._circuits) >= MAX_CIRCUIT_HOSTS:
                    oldest = min(self._circuits, key=lambda h: max(seen for _, seen in self._circuits[h].values()))
                    self._circuits[oldest].clear()
                    self._export_circuits(oldest)
                circuits = self._circuits[host] = {}
            if circuit in circuits or len(circuits) < MAX_CIRCUIT_HOSTS:
                circuits[circuit] = (state, now)
        self._export_circuits(host)

    def _export_circuits(self, host: str) -> None:
        circuits = self._circuits.get(host)
        if circuits:
            self.circuit_state.labels(host).set(max(state for state, _ in circuits.values()))
            return
        self._circuits.pop(host, None)
        with contextlib.suppress(KeyError):
            self.circuit_state.remove(host)

    def _forget_stale(self, now: float) -> None:
        if now - self._circuits_swept < 1.0:
            return
        self._circuits_swept = now
        for host, circuits in list(self._circuits.items()):
            for circuit in [c for c, (_, seen) in circuits.items() if now - seen > CIRCUIT_SERIES_TTL_S]:
                del circuits[circuit]
            self._export_circuits(host)

    def render(self) -> bytes:
        return generate_latest(self.registry)
