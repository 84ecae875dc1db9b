"""The ASGI app: factory and lifespan (engines and clients are created here, never at import)."""

from __future__ import annotations

import gc
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from vivix.admin.endpoints import router as admin_router
from vivix.billing.endpoints import credits
from vivix.billing.endpoints import router as credits_router
from vivix.catalog.endpoints import router as models_router
from vivix.generations.endpoints import generate, read_generation
from vivix.generations.endpoints import router as generations_router
from vivix.generations.streams import router as streams_router
from vivix.kit.errors import InvalidParams, MethodNotAllowed, NotFound, VivixError
from vivix.kit.http import FastLane, RequestContext, ResponseHeadersMiddleware, json_response
from vivix.kit.ids import request_id as new_request_id
from vivix.kit.metrics import MetricsMiddleware
from vivix.kit.tracing import TracingMiddleware, configure_tracing, shutdown_tracing
from vivix.openapi.document import openapi_document
from vivix.openapi.pages import install_docs_pages
from vivix.operations.endpoints import router as operations_router
from vivix.runtime import Runtime, build_runtime, close_runtime
from vivix.settings import Settings
from vivix.storage.endpoints import router as files_router
from vivix.studio.pages import router as studio_router
from vivix.studio.security import SecurityHeadersMiddleware
from vivix.studio.web import STATIC_DIR, StudioStaticFiles, StudioWeb, error_page, wants_html
from vivix.webhooks.endpoints import router as webhooks_router

log = structlog.get_logger(__name__)

# The calls clients make most, served through the fast lane (`kit.http.FastLane`).
HOT_ENDPOINTS = (generate, read_generation, credits)


class VivixAPI(FastAPI):
    """FastAPI, with the hot /api/v1 routes served by a `FastLane` (set by `create_app`).
    FastAPI's native OpenTelemetry, when a global provider turns it on, needs its own
    wrapping: requests then all go the usual way."""

    fast_lane: FastLane | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lane = self.fast_lane
        keys = lane.match(scope) if lane is not None else None
        if keys is None or self._native_telemetry.enabled():
            await super().__call__(scope, receive, send)
            return
        assert lane is not None
        scope["app"] = self
        scope.update(keys)
        await lane(scope, receive, send)


def create_app(
    settings: Settings, *, runtime: Runtime | None = None, embedded_worker: bool = False
) -> VivixAPI:
    """The app. Pass `runtime` to share one (tests, benchmarks); otherwise the lifespan
    builds it from `settings` and closes it on shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = runtime is None
        if settings.otel_endpoint:
            configure_tracing(settings.otel_endpoint, "vivix-api")
        app.state.runtime = runtime or await build_runtime(settings)
        worker = None
        if embedded_worker:
            from vivix.worker.runner import Worker

            worker = Worker(app.state.runtime)
            await worker.start()
        # What start-up built (modules, routes, the catalog, SQLAlchemy's compiled
        # statements: ~160,000 objects) lives as long as the process: out of the cyclic
        # collector's sight, its full collections scan only what requests leave behind.
        # Each one took up to ~90 ms with them, with every request in flight waiting.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            if worker is not None:
                await worker.stop()
            if owned:
                await close_runtime(app.state.runtime)
            if settings.otel_endpoint:
                shutdown_tracing()

    app = VivixAPI(
        title="Vivix",
        version="1",
        lifespan=lifespan,
        docs_url=None,  # served from vendored assets by install_docs_pages
        redoc_url=None,
    )
    # The routes parse by hand: the document is declared (vivix.openapi), not inferred.
    app.openapi = openapi_document  # type: ignore[method-assign]
    if runtime is not None:
        app.state.runtime = runtime
    app.include_router(generations_router)
    app.include_router(streams_router)
    app.include_router(models_router)
    app.include_router(credits_router)
    app.include_router(webhooks_router)
    app.include_router(admin_router)
    app.include_router(files_router)
    app.include_router(operations_router)
    install_docs_pages(app)
    app.state.studio = StudioWeb(settings.resolved_public_url)
    app.include_router(studio_router)
    app.mount("/static", StudioStaticFiles(directory=STATIC_DIR), name="static")
    _install_error_handlers(app)
    app.add_middleware(ResponseHeadersMiddleware)
    app.add_middleware(SecurityHeadersMiddleware, storage_public_url=settings.storage_public_url)
    app.add_middleware(MetricsMiddleware)
    if settings.otel_endpoint:  # outermost: the span covers the whole request
        app.add_middleware(TracingMiddleware)
    app.fast_lane = FastLane(
        app,
        [
            route
            for router in (generations_router, credits_router)
            for route in router.routes
            if isinstance(route, APIRoute) and route.endpoint in HOT_ENDPOINTS
        ],
    )
    return app


def _context(request: Request) -> RequestContext:
    state = request.scope.setdefault("state", {})
    ctx = state.get("vivix_ctx")
    if ctx is None:
        ctx = state["vivix_ctx"] = RequestContext(new_request_id())
    return ctx  # type: ignore[no-any-return]


def _error_response(
    request: Request, error: VivixError, *, with_context_headers: bool = False
) -> Response:
    ctx = _context(request)
    headers = dict(error.headers)
    if with_context_headers:
        headers.update({k.decode(): v.decode() for k, v in ctx.headers()})
    return json_response(error.body(ctx.request_id), error.status, headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(VivixError)
    async def vivix_error(request: Request, exc: VivixError) -> Response:
        return _error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": ("body",), "msg": "invalid"}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        if first.get("type") == "json_invalid":
            from vivix.kit.errors import InvalidJson

            return _error_response(request, InvalidJson())
        return _error_response(
            request, InvalidParams(".".join(loc) or "body", str(first.get("msg")))
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404 and wants_html(request):
            return await error_page(request, NotFound("There is no page at this address."))
        if exc.status_code == 405:
            return _error_response(request, MethodNotAllowed())
        if exc.status_code == 404:
            return _error_response(request, NotFound())
        error = VivixError(str(exc.detail))
        error.status = exc.status_code  # type: ignore[misc]
        return _error_response(request, error)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        # Runs outside the header middleware, so it stamps the context headers itself.
        # A plain traceback, not structlog's default rich one: that one prints every frame's
        # locals (the request scope with the caller's Authorization header, i.e. API keys)
        # and takes seconds to render.
        log.error(
            "unhandled_error",
            path=request.url.path,
            request_id=_context(request).request_id,
            error=repr(exc),
            exception="".join(traceback.format_exception(exc)),
        )
        if wants_html(request):
            return await error_page(request, VivixError())
        return _error_response(request, VivixError(), with_context_headers=True)
