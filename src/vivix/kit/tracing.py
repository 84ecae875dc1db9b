"""Optional OpenTelemetry traces (`VIVIX_OTEL_ENDPOINT`, OTLP over HTTP), off by default.

One trace per generation: the API's request span (`POST /api/v1/generate`, continuing a
client's `traceparent` header when it sent one) → the worker's job span → a span per
provider call (submit, poll, find). The submit stores the request span's W3C `traceparent`
with the generation (`generations.traceparent`); the worker that claims the job, in any
process, starts the job span as its child.

Off (no endpoint): nothing of OpenTelemetry is imported (it costs ~0.4 s and memory per
process) and every function here returns at its first line. On: `configure_tracing` sets
up a batching exporter (the SDK's `OTEL_BSP_*` variables tune it) whose thread sends the
spans, so a slow or absent collector never holds up a request or a job; `shutdown_tracing`
flushes what is left when the process stops.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_provider: Any = None
_tracer: Any = None


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL for `endpoint` (a collector's base URL, or already the
    full `…/v1/traces`)."""
    base = endpoint.rstrip("/")
    return base if base.endswith("/v1/traces") else f"{base}/v1/traces"


def configure_tracing(endpoint: str | None, service: str) -> None:
    """Export this process's spans to `endpoint` as `service`; None turns tracing off."""
    global _provider, _tracer
    shutdown_tracing()
    if not endpoint:
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url(endpoint))))
    _provider, _tracer = provider, provider.get_tracer("vivix")


def shutdown_tracing(within_s: float = 5.0) -> None:
    """Flush and stop the exporter (no-op when tracing is off), waiting at most `within_s`:
    with the collector down the exporter would retry for longer, holding up a stop."""
    global _provider, _tracer
    provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        flushing = threading.Thread(target=provider.shutdown, name="otel-shutdown", daemon=True)
        flushing.start()
        flushing.join(within_s)


def enabled() -> bool:
    return _tracer is not None


_OFF = contextlib.nullcontext()


def span(
    name: str,
    *,
    kind: str = "INTERNAL",
    traceparent: str | None = None,
    attributes: Mapping[str, str | int | float | bool] | None = None,
) -> contextlib.AbstractContextManager[None]:
    """A span around the block, current inside it; its parent is `traceparent` when given
    (a job's, stored at submit), else the current span. Exceptions mark it as an error."""
    if _tracer is None:
        return _OFF  # reusable, and no generator frame per call on the hot path
    return _span(name, kind, traceparent, attributes or {})


@contextlib.contextmanager
def _span(
    name: str,
    kind: str,
    traceparent: str | None,
    attributes: Mapping[str, str | int | float | bool],
) -> Iterator[None]:
    from opentelemetry.trace import SpanKind

    parent = _extract({"traceparent": traceparent}) if traceparent else None
    with (
        _tracer.start_as_current_span(
            name, context=parent, kind=SpanKind[kind], attributes=dict(attributes)
        ) as current,
        _logged_trace_id(current),
    ):
        yield


@contextlib.contextmanager
def _logged_trace_id(current: Any) -> Iterator[None]:
    """Log lines written inside the span carry its `trace_id`, to go from a line to its trace."""
    tokens = structlog.contextvars.bind_contextvars(
        trace_id=format(current.get_span_context().trace_id, "032x")
    )
    try:
        yield
    finally:
        structlog.contextvars.reset_contextvars(**tokens)


def annotate(**attributes: str | int | float | bool | None) -> None:
    """Attributes on the current span (`vivix.` prefixed; None values skipped)."""
    if _tracer is None:
        return
    from opentelemetry import trace

    current = trace.get_current_span()
    for key, value in attributes.items():
        if value is not None:
            current.set_attribute(f"vivix.{key}", value)


def current_traceparent() -> str | None:
    """The W3C `traceparent` of the current span, to store with a job (None when off)."""
    if _tracer is None:
        return None
    from opentelemetry.propagate import inject

    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier.get("traceparent")


def _extract(carrier: Mapping[str, str]) -> Any:
    from opentelemetry.propagate import extract

    return extract(dict(carrier))


class TracingMiddleware:
    """A SERVER span per HTTP request, named `METHOD /route/{template}` (ids stay out of
    span names). Installed only when tracing is on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _tracer is None:
            await self.app(scope, receive, send)
            return
        from opentelemetry.trace import SpanKind, Status, StatusCode

        headers = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in (b"traceparent", b"tracestate")
        }
        method = scope["method"]
        status = 500

        async def send_recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with (
            _tracer.start_as_current_span(
                method, context=_extract(headers), kind=SpanKind.SERVER
            ) as server_span,
            _logged_trace_id(server_span),
        ):
            try:
                await self.app(scope, receive, send_recording)
            finally:
                route = getattr(scope.get("route"), "path", None)
                if route:
                    server_span.update_name(f"{method} {route}")
                    server_span.set_attribute("http.route", route)
                server_span.set_attribute("http.request.method", method)
                server_span.set_attribute("http.response.status_code", status)
                ctx = scope.get("state", {}).get("vivix_ctx")
                if ctx is not None:
                    server_span.set_attribute("vivix.request_id", ctx.request_id)
                if status >= 500:
                    server_span.set_status(Status(StatusCode.ERROR))
