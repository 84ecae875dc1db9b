"""HTTP plumbing: per-request context, the headers every response carries, JSON bodies."""

from __future__ import annotations

import inspect
import json
import re
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.convertors import StringConvertor
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vivix.kit.errors import InvalidJson, PayloadTooLarge, UnsupportedMediaType
from vivix.kit.ids import request_id as new_request_id
from vivix.kit.logging import bind_request, debug_enabled, reset_context

if TYPE_CHECKING:
    from vivix.runtime import Runtime

log = structlog.get_logger(__name__)
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")
_SURROGATE = re.compile("[\ud800-\udfff]")
# A surrogate can only come out of JSON written as an escape (UTF-8 cannot encode one: the
# body's decoding refuses it), so a body without `\uD8xx`-`\uDFxx` needs no walk.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
# One encoder: json.dumps builds a new one for every call with these options.
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


@dataclass(slots=True)
class RequestContext:
    request_id: str
    rate_limit: int | None = None
    rate_remaining: int | None = None
    rate_reset_s: int | None = None
    balance: int | None = None

    def headers(self) -> list[tuple[bytes, bytes]]:
        out = [(b"x-request-id", self.request_id.encode())]
        if self.rate_remaining is not None:
            out += [
                (b"x-ratelimit-limit", str(self.rate_limit).encode()),
                (b"x-ratelimit-remaining", str(self.rate_remaining).encode()),
                (b"x-ratelimit-reset", str(self.rate_reset_s).encode()),
            ]
        if self.balance is not None:
            out.append((b"x-credits-balance", str(self.balance).encode()))
        return out


class PlainRoute(APIRoute):
    """A route whose endpoint takes the Request (plus path params as strings) and returns a
    Response, doing its own parsing. FastAPI still documents it from the signature, but a
    request skips the dependency solving and validation machinery (~0.1 ms each call)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint

        async def handle(request: Request) -> Response:
            response: Response = await endpoint(request, **request.path_params)
            return response

        return handle


class FastLane:
    """A few hot `PlainRoute`s dispatched straight to their endpoints. On the way through
    FastAPI a request pays ~0.1 ms of CPU before its endpoint runs: the router matches it
    against every route and mount (Studio, admin, docs) in Python, and exception
    middlewares and exit stacks wrap each call twice. What a response is made of stays the
    same: the app's own middlewares (new instances of `app.user_middleware`, in FastAPI's
    order), its exception handlers, its 500 handler outermost (`ServerErrorMiddleware`, as
    FastAPI places it: that response carries only the context headers), and the scope
    keys the router sets (`route`: metrics and traces are labelled by its template).

    `match` takes only these routes' exact methods and paths; everything else goes the
    usual way, another method on these paths too (its 405). The routes must be the ones
    the router would pick for those paths (`tests/kit/test_fast_lane.py` checks) and carry
    no body limit of FastAPI's (Vivix's endpoints enforce their own)."""

    def __init__(self, app: FastAPI, routes: list[APIRoute]) -> None:
        self._app = app
        self._routes: dict[str, list[APIRoute]] = {}
        for route in routes:
            assert isinstance(route, PlainRoute), route.path
            assert route.max_body_size is None, route.path
            # Path parameters are passed on as matched: only str ones are.
            assert all(isinstance(c, StringConvertor) for c in route.param_convertors.values())
            for method in route.methods or ():
                self._routes.setdefault(method, []).append(route)
        self._stack: ASGIApp | None = None
        self._handlers: dict[type, Callable[[Request, Any], Any]] = {}

    def match(self, scope: Scope) -> Scope | None:
        """The scope keys the router would set, when `scope` is for one of these routes."""
        if scope["type"] != "http" or scope.get("root_path"):
            return None
        for route in self._routes.get(scope["method"], ()):
            found = route.path_regex.match(scope["path"])  # as the router matches
            if found is not None:
                return {
                    "router": self._app.router,
                    "route": route,
                    "endpoint": route.endpoint,
                    "path_params": found.groupdict(),
                }
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve a request `match` took, its keys already in `scope`."""
        if self._stack is None:
            self._stack = self._build()
        await self._stack(scope, receive, send)

    def _build(self) -> ASGIApp:
        app = self._app
        assert app.max_body_size is None
        if app.middleware_stack is None:  # the app counts as started: no middleware added later
            app.middleware_stack = app.build_middleware_stack()
        unexpected = None
        for key, handler in app.exception_handlers.items():
            if key in (500, Exception):
                unexpected = handler
            else:
                assert isinstance(key, type), "status-code handlers would be skipped"
                assert inspect.iscoroutinefunction(handler), key
                self._handlers[key] = handler
        stack: ASGIApp = self._endpoint
        for cls, args, kwargs in reversed(app.user_middleware):
            stack = cls(stack, *args, **kwargs)
        return ServerErrorMiddleware(stack, handler=unexpected, debug=app.debug)

    async def _endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        try:
            response: Response = await scope["endpoint"](request, **scope["path_params"])
        except Exception as exc:
            # The handler of the nearest class, as Starlette's ExceptionMiddleware looks it up.
            handler = next(
                (self._handlers[c] for c in type(exc).__mro__ if c in self._handlers), None
            )
            if handler is None:
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)


def runtime_of(request: Request) -> Runtime:
    """The process's `Runtime`, put on the app by its lifespan."""
    runtime: Runtime = request.app.state.runtime
    return runtime


def context_of(request: Request) -> RequestContext:
    ctx: RequestContext = request.scope["state"]["vivix_ctx"]
    return ctx


class ResponseHeadersMiddleware:
    """Gives each request a RequestContext and stamps its headers on the response, whether
    the response is a success or an error. Pure ASGI (no per-request task overhead)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        ctx = RequestContext(
            incoming if incoming and _SANE_REQUEST_ID.match(incoming) else new_request_id()
        )
        scope.setdefault("state", {})["vivix_ctx"] = ctx
        status = 500
        start = time.perf_counter()

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if k not in (b"x-request-id", b"x-credits-balance")
                ]
                message["headers"] = headers + ctx.headers()
            await send(message)

        # Every log line of this request carries its id (and, once known, its account and
        # generation); the context is restored afterwards.
        tokens = bind_request(ctx.request_id)
        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            # An access line at debug level: the path without its query string, which may
            # carry cursors or filters.
            if debug_enabled():
                log.debug(
                    "http_request",
                    method=scope["method"],
                    path=scope["path"],
                    status=status,
                    duration_ms=round((time.perf_counter() - start) * 1000, 1),
                )
            reset_context(tokens)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        content=_JSON.encode(body).encode(),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


async def read_json_object(request: Request, max_bytes: int) -> tuple[dict[str, Any], bytes]:
    """The body as a JSON object (and its raw bytes), enforcing content type and size."""
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        raise UnsupportedMediaType()
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge()
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        # ValueError covers bad UTF-8, bad JSON and integer literals over Python's digit limit.
        raise InvalidJson() from None
    if not isinstance(data, dict) or (
        _SURROGATE_ESCAPE.search(raw) is not None and _has_lone_surrogate(data)
    ):
        raise InvalidJson()
    return data, raw


def _has_lone_surrogate(value: Any) -> bool:
    """JSON may escape half a surrogate pair (`"\\ud800"`): not a Unicode character, so it
    can be neither stored nor encoded back to UTF-8 in a response. Iterative: no recursion
    limit to hit on deeply nested bodies."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False
