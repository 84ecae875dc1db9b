"""Helpers for the SDK tests: clients pointed at the live server, and a transport that
records every request the SDK sends (over the real network) so retries can be inspected."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

import httpx

from tests.openapi_conformance import check_response


@dataclass
class Sent:
    method: str
    path: str
    status: int | None
    idempotency_key: str | None
    last_event_id: str | None = None


_EVENT_END = re.compile(rb"\r?\n\r?\n")
_EVENT_ID = re.compile(rb"^id: ?(\S+)", re.MULTILINE)


@dataclass
class StreamCut:
    """Cuts the first event stream after `after` events with an id (a connection dropped
    mid-stream) and remembers the id of the last event that got through."""

    after: int
    last_id_through: str | None = None
    used: bool = False
    _buffer: bytes = b""
    _seen: int = 0

    def take(self, request: httpx.Request) -> bool:
        wanted = not self.used and request.url.path.endswith("/events")
        self.used = self.used or wanted
        return wanted

    def feed(self, chunk: bytes) -> tuple[list[bytes], bool]:
        """The whole events `chunk` completes, and whether the connection drops after them."""
        self._buffer += chunk
        blocks: list[bytes] = []
        while (end := _EVENT_END.search(self._buffer)) is not None:
            block, self._buffer = self._buffer[: end.end()], self._buffer[end.end() :]
            blocks.append(block)
            if (found := _EVENT_ID.search(block)) is not None:
                self._seen += 1
                self.last_id_through = found.group(1).decode()
                if self._seen >= self.after:
                    return blocks, True
        return blocks, False


_DROPPED = "connection reset mid-stream (simulated)"


class _CutSyncStream(httpx.SyncByteStream):
    def __init__(self, response: httpx.Response, cut: StreamCut) -> None:
        self._response, self._cut = response, cut

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._response.iter_raw():
            blocks, dropped = self._cut.feed(chunk)
            yield from blocks
            if dropped:
                raise httpx.ReadError(_DROPPED)

    def close(self) -> None:
        self._response.close()


class _CutAsyncStream(httpx.AsyncByteStream):
    def __init__(self, response: httpx.Response, cut: StreamCut) -> None:
        self._response, self._cut = response, cut

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._response.aiter_raw():
            blocks, dropped = self._cut.feed(chunk)
            for block in blocks:
                yield block
            if dropped:
                raise httpx.ReadError(_DROPPED)

    async def aclose(self) -> None:
        await self._response.aclose()


def _sent(request: httpx.Request, response: httpx.Response) -> Sent:
    return Sent(
        request.method,
        request.url.path,
        response.status_code,
        request.headers.get("idempotency-key"),
        request.headers.get("last-event-id"),
    )


def _with_stream(
    request: httpx.Request,
    response: httpx.Response,
    stream: httpx.SyncByteStream | httpx.AsyncByteStream,
) -> httpx.Response:
    return httpx.Response(
        response.status_code, headers=response.headers, stream=stream, request=request
    )


@dataclass
class RecordingTransport(httpx.BaseTransport):
    """The real HTTP transport, recording each exchange and checking every /api/v1
    response against /openapi.json. `drop_after` may turn a delivered answer into a
    connection error (the server did the work; the client never heard back)."""

    inner: httpx.BaseTransport = field(default_factory=httpx.HTTPTransport)
    sent: list[Sent] = field(default_factory=list)
    drop_after: Callable[[httpx.Request, httpx.Response], bool] | None = None
    cut: StreamCut | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = self.inner.handle_request(request)
        except httpx.TransportError:
            self.sent.append(Sent(request.method, request.url.path, None, None))
            raise
        self.sent.append(_sent(request, response))
        if "text/event-stream" not in response.headers.get("content-type", ""):
            response.read()
            check_response(response, request)
        if self.drop_after is not None and self.drop_after(request, response):
            response.close()
            raise httpx.ReadError("connection reset by peer (simulated)", request=request)
        if self.cut is not None and self.cut.take(request):
            return _with_stream(request, response, _CutSyncStream(response, self.cut))
        return response

    def close(self) -> None:
        self.inner.close()

    def submits(self) -> list[Sent]:
        return [s for s in self.sent if s.method == "POST" and s.path == "/api/v1/generate"]


@dataclass
class AsyncRecordingTransport(httpx.AsyncBaseTransport):
    inner: httpx.AsyncBaseTransport = field(default_factory=httpx.AsyncHTTPTransport)
    sent: list[Sent] = field(default_factory=list)
    cut: StreamCut | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        self.sent.append(_sent(request, response))
        if "text/event-stream" not in response.headers.get("content-type", ""):
            await response.aread()
            check_response(response, request)
        if self.cut is not None and self.cut.take(request):
            return _with_stream(request, response, _CutAsyncStream(response, self.cut))
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


class RecordedSleeps(list[float]):
    """A `sleep` for the client that records the delay and returns at once."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)
