"""The asynchronous client: the same surface as `Vivix`, awaitable."""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx

from vivix_client import _core, errors
from vivix_client._core import Call, Calls
from vivix_client.client import _finished, _output_urls, _webhook_body
from vivix_client.models import (
    Catalog,
    Credits,
    Generation,
    GenerationPage,
    Model,
    WebhookDelivery,
    WebhookDeliveryPage,
    WebhookEndpoint,
)

T = TypeVar("T")
ProgressCallback = Callable[[Generation], Awaitable[None] | None]


class AsyncVivix:
    """A client of one Vivix server, for one API key, for asyncio.

    >>> async with AsyncVivix() as client:
    ...     gen = await client.run("vivix-local-image", "a lighthouse at dusk")
    ...     await client.download(gen, "out/")

    Failed calls are retried (`max_retries`, backoff with jitter, honouring Retry-After) on
    429, 503 (unless no provider is configured) and 5xx answers and on connection errors,
    when retrying is safe: reads, cancels and submits (each submit carries one
    Idempotency-Key for all its attempts, so it is never charged twice).
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int = 3,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._config = _core.settings(api_key, base_url, timeout, max_retries)
        self._http = httpx.AsyncClient(
            base_url=self._config.base_url,
            headers=_core.client_headers(self._config),
            timeout=self._config.timeout,
            transport=transport,
        )
        self._sleep = sleep
        self._streams: bool | None = None  # False once the server proved it has no streams
        self.webhooks = AsyncWebhooks(self)

    @property
    def base_url(self) -> str:
        return self._config.base_url

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncVivix:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- generations ------------------------------------------------------------------

    async def generate(
        self,
        model: str,
        prompt: str,
        *,
        metadata: dict[str, str] | None = None,
        idempotency_key: str | None = None,
        wait: float | None = None,
        **params: Any,
    ) -> Generation:
        """Submit a generation; returns it pending (or, with `wait=N` seconds, in the state
        it reached). `params` are the model's (aspect_ratio, resolution, seed, ...)."""
        call = Calls.generate(
            model,
            prompt,
            params,
            metadata=metadata,
            idempotency_key=idempotency_key,
            wait_s=wait,
            timeout=self._config.timeout,
        )
        return await self._execute(call)

    async def get(self, generation_id: str) -> Generation:
        """A generation by id (also how to reattach to one submitted earlier)."""
        return await self._execute(Calls.get(generation_id))

    async def cancel(self, generation_id: str) -> Generation:
        return await self._execute(Calls.cancel(generation_id))

    async def list(
        self,
        *,
        status: str | None = None,
        model: str | None = None,
        created_after: str | None = None,
        created_before: str | None = None,
        metadata: dict[str, str] | None = None,
        page_size: int | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[Generation]:
        """Every matching generation, newest first, fetching pages as needed (at most
        `limit` of them when given)."""
        cursor: str | None = None
        seen = 0
        while True:
            page = await self.list_page(
                cursor=cursor,
                limit=page_size,
                status=status,
                model=model,
                created_after=created_after,
                created_before=created_before,
                metadata=metadata,
            )
            for generation in page.data:
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield generation
            if not page.has_more or not page.next_cursor:
                return
            cursor = page.next_cursor

    async def list_page(
        self, *, cursor: str | None = None, limit: int | None = None, **filters: Any
    ) -> GenerationPage:
        call = Calls.list_page(
            cursor=cursor,
            limit=limit,
            status=filters.get("status"),
            model=filters.get("model"),
            created_after=filters.get("created_after"),
            created_before=filters.get("created_before"),
            metadata=filters.get("metadata"),
        )
        return await self._execute(call)

    async def events(
        self, generation_id: str, *, last_event_id: str | None = None
    ) -> AsyncIterator[Generation]:
        """The generation's states as the server streams them (Server-Sent Events), ending
        after the final one; with `last_event_id`, only those after that event."""
        async for generation in self._events(generation_id, _core.StreamPosition(last_event_id)):
            yield generation

    async def _events(
        self, generation_id: str, position: _core.StreamPosition
    ) -> AsyncIterator[Generation]:
        request = self._http.build_request(
            "GET",
            f"/api/v1/generations/{generation_id}/events",
            headers=position.headers(),
            timeout=httpx.Timeout(self._config.timeout.connect, read=45.0),
        )
        try:
            response = await self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise _core.wrap_transport_error(exc) from exc
        try:
            if response.status_code >= 400:
                await response.aread()
                _core.raise_for_error(response)
            parser = _core.SSEParser()
            async for line in response.aiter_lines():
                for event in parser.feed(line):
                    generation = _core.generation_of(event)
                    if generation is not None:
                        position.seen(event.id)
                        yield generation
                        if generation.finished:
                            return
        except httpx.TransportError as exc:
            raise _core.wrap_transport_error(exc) from exc
        finally:
            await response.aclose()

    async def wait(
        self,
        generation_id: str,
        *,
        on_progress: ProgressCallback | None = None,
        timeout: float = 900.0,
        poll_interval: float = 1.0,
        raise_on_failure: bool = True,
    ) -> Generation:
        """Until the generation is finished: through its event stream when the server
        has one (a dropped stream resumes after its last event), else by polling. `on_progress` gets each
        new state (status, queue position, progress)."""
        deadline = time.monotonic() + timeout
        last: Generation | None = None
        position = _core.StreamPosition()
        while self._streams is not False:
            try:
                async for generation in self._events(generation_id, position):
                    last = await _report(on_progress, last, generation)
                    if generation.finished:
                        return _finished(generation, raise_on_failure)
                    if time.monotonic() > deadline:
                        break
                break  # ended without a final state (or out of time): polling settles it
            except _core.STREAM_UNSUPPORTED:
                self._streams = False
            except errors.APIConnectionError:
                # Dropped: open it again after the last event seen; after a few drops in
                # a row, polling picks up where the stream stopped.
                retry_in = position.retry_delay()
                if retry_in is None or time.monotonic() + retry_in > deadline:
                    break
                await self._sleep(retry_in)
        delay = poll_interval
        while True:
            generation = await self.get(generation_id)
            last = await _report(on_progress, last, generation)
            if generation.finished:
                return _finished(generation, raise_on_failure)
            if time.monotonic() + delay > deadline:
                raise errors.APITimeoutError(
                    f"generation {generation_id} still {generation.status} after {timeout:g}s"
                )
            await self._sleep(delay)
            delay = min(delay * 1.5, 5.0)

    async def run(
        self,
        model: str,
        prompt: str,
        *,
        on_progress: ProgressCallback | None = None,
        timeout: float = 900.0,
        metadata: dict[str, str] | None = None,
        idempotency_key: str | None = None,
        **params: Any,
    ) -> Generation:
        """Submit and wait: the completed generation, or GenerationFailed."""
        submitted = await self.generate(
            model, prompt, metadata=metadata, idempotency_key=idempotency_key, **params
        )
        return await self.wait(submitted.generation_id, on_progress=on_progress, timeout=timeout)

    async def download(
        self, generation: Generation | str, directory: str | Path = "."
    ) -> builtins.list[Path]:
        """Saves every output file of a completed generation into `directory`, named
        `<generation id>-<index>.<ext>`; returns the paths."""
        if isinstance(generation, str):
            generation = await self.get(generation)
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        saved = []
        for index, url in enumerate(_output_urls(generation)):
            request = self._http.build_request("GET", url)
            del request.headers["Authorization"]  # output URLs are public: never leak the key
            response = await self._send_with_retries(request, Call("GET", url, lambda r: r))
            try:
                if response.status_code >= 400:
                    await response.aread()
                    _core.raise_for_error(response)
                content_type = response.headers.get("content-type")
                path = target / _core.file_name(generation.generation_id, index, url, content_type)
                partial = path.with_name(path.name + ".part")
                with partial.open("wb") as handle:
                    async for chunk in response.aiter_bytes():
                        handle.write(chunk)
                partial.replace(path)
                saved.append(path)
            finally:
                await response.aclose()
        return saved

    # -- catalog and wallet -----------------------------------------------------------

    async def models(self) -> builtins.list[Model]:
        return (await self.catalog()).models

    async def model(self, slug: str) -> Model:
        return await self._execute(Calls.model(slug))

    async def catalog(self) -> Catalog:
        """Tier, balance, limits and every model this key may call."""
        return await self._execute(Calls.catalog())

    async def credits(self) -> Credits:
        return await self._execute(Calls.credits())

    # -- plumbing ----------------------------------------------------------------------

    async def _execute(self, call: Call[T]) -> T:
        request = _core.build_request(self._http, self._config, call)
        response = await self._send_with_retries(request, call, stream=False)
        return call.parse(response)

    async def _send_with_retries(
        self, request: httpx.Request, call: Call[Any], *, stream: bool = True
    ) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = await self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                delay = _core.retry_delay(self._config, call, attempt, transport_error=exc)
                if delay is None:
                    raise _core.wrap_transport_error(exc) from exc
            else:
                if response.status_code < 400:
                    return response
                if stream:
                    await response.aread()
                    await response.aclose()
                try:
                    _core.raise_for_error(response)
                except errors.APIError as error:
                    delay = _core.retry_delay(self._config, call, attempt, error=error)
                    if delay is None:
                        raise
            assert delay is not None
            await self._sleep(delay)
            attempt += 1


class AsyncWebhooks:
    """Webhook endpoints of the account (API.md §5.1): `await client.webhooks.create(url)`."""

    def __init__(self, client: AsyncVivix) -> None:
        self._client = client

    async def list(self) -> builtins.list[WebhookEndpoint]:
        return await self._client._execute(Calls.webhooks_list())

    async def create(
        self,
        url: str,
        *,
        events: builtins.list[str] | None = None,
        description: str | None = None,
        include_studio: bool | None = None,
    ) -> WebhookEndpoint:
        """The new endpoint; its `secret` is shown this once: keep it."""
        body = _webhook_body(url, events, description, include_studio)
        return await self._client._execute(Calls.webhook_create(body))

    async def update(self, endpoint_id: str, **changes: Any) -> WebhookEndpoint:
        return await self._client._execute(Calls.webhook_update(endpoint_id, changes))

    async def delete(self, endpoint_id: str) -> None:
        await self._client._execute(Calls.webhook_delete(endpoint_id))

    async def rotate_secret(
        self, endpoint_id: str, *, expire_previous_now: bool = False
    ) -> WebhookEndpoint:
        return await self._client._execute(Calls.webhook_rotate(endpoint_id, expire_previous_now))

    async def test(self, endpoint_id: str) -> WebhookDelivery:
        return await self._client._execute(Calls.webhook_test(endpoint_id))

    async def deliveries(
        self, endpoint_id: str, *, status: str | None = None, generation_id: str | None = None
    ) -> AsyncIterator[WebhookDelivery]:
        cursor: str | None = None
        while True:
            call = Calls.webhook_deliveries(endpoint_id, cursor, status, generation_id)
            page: WebhookDeliveryPage = await self._client._execute(call)
            for delivery in page.data:
                yield delivery
            if not page.has_more or not page.next_cursor:
                return
            cursor = page.next_cursor

    async def delivery(self, endpoint_id: str, delivery_id: str) -> WebhookDelivery:
        return await self._client._execute(Calls.webhook_delivery(endpoint_id, delivery_id))

    async def redeliver(self, endpoint_id: str, delivery_id: str) -> WebhookDelivery:
        return await self._client._execute(Calls.webhook_redeliver(endpoint_id, delivery_id))


async def _report(
    on_progress: ProgressCallback | None, last: Generation | None, generation: Generation
) -> Generation:
    if on_progress is not None and _core.changed(last, generation):
        outcome = on_progress(generation)
        if outcome is not None:
            await outcome
    return generation
