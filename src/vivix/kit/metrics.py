"""Prometheus metrics, one set per process, multiprocess-safe.

With `PROMETHEUS_MULTIPROC_DIR` set (the deploy files set it), prometheus-client keeps
every counter and histogram in memory-mapped files in that directory, and a scrape sums
the files of every process on the machine that shares it: uvicorn workers, `vivix worker`
processes. Without it the values live in this process. Gauges that describe shared state
(queue depth, circuits) are not kept here: they are read from the database at scrape time
(`vivix.operations.metrics`).

Tests and benchmarks read deltas: these are process-wide, as Prometheus expects.
"""

from __future__ import annotations

import os
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
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
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"]
            http_requests.labels(method, route, str(status)).inc()
            http_latency.labels(method, route).observe(time.perf_counter() - start)
