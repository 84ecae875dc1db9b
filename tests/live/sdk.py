"""Helpers for the SDK tests: clients pointed at the live server, and a transport that
records every request the SDK sends (over the real network) so retries can be inspected."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from tests.openapi_conformance import check_response


@dataclass
class Sent:
    method: str
    path: str
    status: int | None
    idempotency_key: str | None


@dataclass
class RecordingTransport(httpx.BaseTransport):
    """The real HTTP transport, recording each exchange and checking every /api/v1
    response against /openapi.json. `drop_after` may turn a delivered answer into a
    connection error (the server did the work; the client never heard back)."""

    inner: httpx.BaseTransport = field(default_factory=httpx.HTTPTransport)
    sent: list[Sent] = field(default_factory=list)
    drop_after: Callable[[httpx.Request, httpx.Response], bool] | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = self.inner.handle_request(request)
        except httpx.TransportError:
            self.sent.append(Sent(request.method, request.url.path, None, None))
            raise
        key = request.headers.get("idempotency-key")
        self.sent.append(Sent(request.method, request.url.path, response.status_code, key))
        if "text/event-stream" not in response.headers.get("content-type", ""):
            response.read()
            check_response(response, request)
        if self.drop_after is not None and self.drop_after(request, response):
            response.close()
            raise httpx.ReadError("connection reset by peer (simulated)", request=request)
        return response

    def close(self) -> None:
        self.inner.close()

    def submits(self) -> list[Sent]:
        return [s for s in self.sent if s.method == "POST" and s.path == "/api/v1/generate"]


@dataclass
class AsyncRecordingTransport(httpx.AsyncBaseTransport):
    inner: httpx.AsyncBaseTransport = field(default_factory=httpx.AsyncHTTPTransport)
    sent: list[Sent] = field(default_factory=list)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        key = request.headers.get("idempotency-key")
        self.sent.append(Sent(request.method, request.url.path, response.status_code, key))
        if "text/event-stream" not in response.headers.get("content-type", ""):
            await response.aread()
            check_response(response, request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


class RecordedSleeps(list[float]):
    """A `sleep` for the client that records the delay and returns at once."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)
