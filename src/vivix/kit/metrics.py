"""Prometheus metrics, one set per process, multiprocess-safe.

With `PROMETHEUS_MULTIPROC_DIR` set (the deploy files set it), prometheus-client keeps
every counter and histogram in memory-mapped files in that directory, and a scrape sums
the files of every process on the machine that shares it: uvicorn workers, `vivix worker`
processes. Without it the values live in this process. Gauges that describe shared state
(queue depth, circuits) are not kept here: they are read from the database at scrape time
(`vivix.operations.metrics`).

Tests and benchmarks read deltas: these are process-wide, as Prometheus expects.

The families, and who records them (call the functions below; don't touch the objects):

| family | recorded by |
|---|---|
| `vivix_http_requests_total`, `vivix_http_request_seconds` | `MetricsMiddleware` |
| `vivix_queue_wait_seconds{model}` | worker, at a generation's first claim |
| `vivix_job_run_seconds{model,status}` | `generations.finish`, first claim → final state |
| `vivix_generations_finished_total{model,status,error_code}` | `generations.finish` |
| `vivix_provider_requests_total{provider,route,operation,outcome}`, `vivix_provider_request_seconds{provider,route,operation}` | worker, around every adapter call |
| `vivix_credits_{held,captured,released}_total` | `billing.ledger`, when its transaction commits |
| `vivix_admission_batch_size` | `billing.ledger`, per committed admission batch (its number of admissions) |
| `vivix_webhook_deliveries_total{outcome}`, `vivix_webhook_delivery_lag_seconds` | `observe_webhook_delivery` |
| `vivix_sse_streams_open` | `sse_stream()` / `sse_stream_opened()` + `sse_stream_closed()` |
| `vivix_retention_pruned_total{what}` | the retention job |
| `vivix_queue_depth`, `vivix_provider_circuit_open`, `vivix_provider_consecutive_failures` | read from the database at scrape time (`operations.metrics`) |
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MULTIPROCESS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if MULTIPROCESS_DIR:
    # prometheus-client writes a file per process and metric there from the first use on.
    os.makedirs(MULTIPROCESS_DIR, exist_ok=True)

REGISTRY = CollectorRegistry(auto_describe=True)
CONTENT_TYPE = CONTENT_TYPE_LATEST

# Latency of one HTTP request, seconds.
_HTTP_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

http_requests = Counter(
    "vivix_http_requests_total",
    "HTTP requests",
    ["method", "route", "status"],
    registry=REGISTRY,
)
http_latency = Histogram(
    "vivix_http_request_seconds",
    "HTTP request latency",
    ["method", "route"],
    registry=REGISTRY,
    buckets=_HTTP_BUCKETS,
)

# Seconds from submit to the first claim, and from the first claim to the final state.
_QUEUE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_RUN_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
_PROVIDER_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_LAG_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400)

queue_wait = Histogram(
    "vivix_queue_wait_seconds",
    "Seconds a generation waited from submit to its first claim by a worker",
    ["model"],
    registry=REGISTRY,
    buckets=_QUEUE_BUCKETS,
)
job_run = Histogram(
    "vivix_job_run_seconds",
    "Seconds from a generation's first claim to its final state",
    ["model", "status"],
    registry=REGISTRY,
    buckets=_RUN_BUCKETS,
)
generations_finished = Counter(
    "vivix_generations_finished",
    "Generations that reached a final state, by outcome; error_code empty unless failed",
    ["model", "status", "error_code"],
    registry=REGISTRY,
)
provider_requests = Counter(
    "vivix_provider_requests",
    "Calls to a provider adapter (submit, poll, find, cancel) by outcome: ok, retriable, "
    "rejected, fatal, error",
    ["provider", "route", "operation", "outcome"],
    registry=REGISTRY,
)
provider_latency = Histogram(
    "vivix_provider_request_seconds",
    "Latency of one provider adapter call (including the adapter's own HTTP retries)",
    ["provider", "route", "operation"],
    registry=REGISTRY,
    buckets=_PROVIDER_BUCKETS,
)
credits_held = Counter(
    "vivix_credits_held", "Credits held at admission (committed)", registry=REGISTRY
)
credits_captured = Counter(
    "vivix_credits_captured", "Credits captured (charged) at settlement", registry=REGISTRY
)
credits_released = Counter(
    "vivix_credits_released",
    "Credits of holds released at settlement (the whole hold; the charge is captured)",
    registry=REGISTRY,
)
admission_batch = Histogram(
    "vivix_admission_batch_size",
    "Admissions written per admission transaction (group commit), refused ones included",
    registry=REGISTRY,
    buckets=_BATCH_BUCKETS,
)
webhook_deliveries = Counter(
    "vivix_webhook_deliveries",
    "Webhook delivery attempts by outcome (delivered, failed, gave_up, ...)",
    ["outcome"],
    registry=REGISTRY,
)
webhook_lag = Histogram(
    "vivix_webhook_delivery_lag_seconds",
    "Seconds from the event to the delivery attempt",
    ["outcome"],
    registry=REGISTRY,
    buckets=_LAG_BUCKETS,
)
sse_streams = Gauge(
    "vivix_sse_streams_open",
    "Server-sent event streams open now",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
retention_pruned = Counter(
    "vivix_retention_pruned",
    "Rows handled by retention: outputs (generations whose files were deleted), generations",
    ["what"],
    registry=REGISTRY,
)

# Webhook outcomes: `delivered` (2xx), `failed` (another attempt follows), `gave_up` (the
# last attempt failed). Their series exist from the start (at 0), so dashboards and alerts
# have a value before the first delivery (in multiprocess mode a series nobody touched is
# not exported at all).
WEBHOOK_OUTCOMES = ("delivered", "failed", "gave_up")
for _outcome in WEBHOOK_OUTCOMES:
    webhook_deliveries.labels(_outcome)
    webhook_lag.labels(_outcome)


# -- what other modules call ---------------------------------------------------------------


def observe_webhook_delivery(outcome: str, lag_s: float) -> None:
    """One delivery attempt ended: `outcome` e.g. "delivered", "failed", "gave_up"; `lag_s`
    from the event's creation to this attempt."""
    webhook_deliveries.labels(outcome).inc()
    webhook_lag.labels(outcome).observe(max(0.0, lag_s))


def sse_stream_opened() -> None:
    sse_streams.inc()


def sse_stream_closed() -> None:
    sse_streams.dec()


@contextmanager
def sse_stream() -> Iterator[None]:
    """Counts an SSE stream as open while the block runs."""
    sse_streams.inc()
    try:
        yield
    finally:
        sse_streams.dec()


def observe_queue_wait(model: str, created_at: datetime, claimed_at: datetime) -> None:
    queue_wait.labels(model).observe(max(0.0, (claimed_at - created_at).total_seconds()))


def observe_finished(
    model: str,
    status: str,
    error_code: str | None,
    started_at: datetime | None,
    ended_at: datetime,
) -> None:
    generations_finished.labels(model, status, error_code or "").inc()
    if started_at is not None:
        job_run.labels(model, status).observe(max(0.0, (ended_at - started_at).total_seconds()))


@contextmanager
def provider_call(provider: str, route: str, operation: str) -> Iterator[None]:
    """Times one adapter call and counts its outcome (by the exception it raised)."""
    start = time.perf_counter()
    outcome = "ok"
    try:
        yield
    except asyncio.CancelledError:
        outcome = ""  # our side stopped waiting: not the provider's outcome
        raise
    except Exception as exc:
        names = {cls.__name__ for cls in type(exc).__mro__}
        outcome = next((o for name, o in _PROVIDER_OUTCOMES if name in names), "error")
        raise
    finally:
        if outcome:
            provider_requests.labels(provider, route, operation, outcome).inc()
            provider_latency.labels(provider, route, operation).observe(time.perf_counter() - start)


# providers.base's errors, by name: kit imports nothing above it.
_PROVIDER_OUTCOMES = (
    ("ProviderRetriableError", "retriable"),
    ("ProviderRejectedError", "rejected"),
    ("ProviderFatalError", "fatal"),
)


def observe_admission(batch_size: int) -> None:
    admission_batch.observe(batch_size)


def credits_on_commit(
    session: AsyncSession, *, held: int = 0, captured: int = 0, released: int = 0
) -> None:
    """Count credit movements when `session`'s transaction commits (not at all if it
    rolls back): the ledger joins its callers' transactions and doesn't commit itself."""
    pending: list[tuple[int, int, int]] = session.sync_session.info.setdefault(_PENDING_CREDITS, [])
    pending.append((held, captured, released))


def count_credits(*, held: int = 0, captured: int = 0, released: int = 0) -> None:
    """Count credit movements already committed."""
    if held:
        credits_held.inc(held)
    if captured:
        credits_captured.inc(captured)
    if released:
        credits_released.inc(released)


_PENDING_CREDITS = "vivix_pending_credit_metrics"


@event.listens_for(Session, "after_commit")
def _count_committed_credits(session: Session) -> None:
    for held, captured, released in session.info.pop(_PENDING_CREDITS, ()):
        count_credits(held=held, captured=captured, released=released)


@event.listens_for(Session, "after_rollback")
def _forget_rolled_back_credits(session: Session) -> None:
    session.info.pop(_PENDING_CREDITS, None)


def process_registry() -> CollectorRegistry:
    """What a scrape of this process reports: in multiprocess mode, the sum over every
    process sharing the directory; else this process's own registry."""
    if MULTIPROCESS_DIR:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


def render(*extra: CollectorRegistry) -> bytes:
    """The exposition text of this process's metrics plus `extra` registries."""
    return b"".join(generate_latest(r) for r in (process_registry(), *extra))


def serve_metrics(port: int, host: str = "0.0.0.0") -> None:
    """A /metrics HTTP server in a background thread (`vivix worker --metrics-port`)."""
    from prometheus_client import start_http_server

    start_http_server(port, addr=host, registry=process_registry())


class MetricsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # The series of each (method, route, status) seen: `labels()` validates and locks
        # on every call (~5 µs per request for the two families); the children stay valid.
        self._counted: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            elapsed = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"]
            series = self._counted.get((method, route, status))
            if series is None:
                series = (
                    http_requests.labels(method, route, str(status)),
                    http_latency.labels(method, route),
                )
                if len(self._counted) < 10_000:  # any method name is a key: bounded
                    self._counted[(method, route, status)] = series
            series[0].inc()
            series[1].observe(elapsed)
