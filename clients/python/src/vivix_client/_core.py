"""What the sync and async clients share, free of I/O: configuration, the calls the API
offers (method, path, body, how to read the answer, whether a retry is safe), error
parsing, the retry policy, and the Server-Sent Events parser."""

from __future__ import annotations

import json
import os
import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import httpx

from vivix_client import errors
from vivix_client._version import __version__
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
DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
USER_AGENT = f"vivix-client-python/{__version__}"

# safe: nothing changes if it runs twice (GET, cancel); keyed: repeated safely thanks to
# its Idempotency-Key; unsafe: retried only when it surely never reached the server.
RetryMode = Literal["safe", "keyed", "unsafe"]
# Transport errors after which the request surely never reached the server.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True)
class Settings:
    api_key: str
    base_url: str
    timeout: httpx.Timeout
    max_retries: int
    backoff_base_s: float = 0.5
    backoff_max_s: float = 20.0
    max_retry_after_s: float = 120.0


def settings(
    api_key: str | None,
    base_url: str | None,
    timeout: float | httpx.Timeout | None,
    max_retries: int,
) -> Settings:
    key = api_key or os.environ.get("VIVIX_API_KEY")
    if not key:
        raise errors.VivixError(
            "No API key: pass api_key=... or set VIVIX_API_KEY (a vvx_live_… or vvx_test_… key)."
        )
    url = (base_url or os.environ.get("VIVIX_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
    if timeout is None:
        timeout = DEFAULT_TIMEOUT
    elif not isinstance(timeout, httpx.Timeout):
        timeout = httpx.Timeout(timeout, connect=min(10.0, timeout))
    return Settings(key, url, timeout, max(0, max_retries))


def client_headers(config: Settings) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {config.api_key}",
        "User-Agent": USER_AGENT,
        "Accept": "application/json",
    }


@dataclass(frozen=True)
class Call(Generic[T]):
    """One logical API call; its retries resend exactly this (same Idempotency-Key)."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    retry: RetryMode = "safe"
    params: list[tuple[str, str]] = field(default_factory=list)
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout: httpx.Timeout | None = None


def _json(response: httpx.Response) -> Any:
    return response.json()


def _parser(model: Any) -> Callable[[httpx.Response], Any]:
    return lambda response: model.model_validate(response.json())


def _nothing(response: httpx.Response) -> None:
    return None


class Calls:
    """The API's calls (API.md §3, §5.1), built once per logical call."""

    @staticmethod
    def generate(
        model: str,
        prompt: str,
        params: dict[str, Any],
        *,
        metadata: dict[str, str] | None,
        idempotency_key: str | None,
        wait_s: float | None,
        timeout: httpx.Timeout,
    ) -> Call[Generation]:
        body: dict[str, Any] = {"model": model, "prompt": prompt}
        body.update({k: v for k, v in params.items() if v is not None})
        if metadata:
            body["metadata"] = metadata
        # One key per logical submit, reused by every retry: the server answers a repeat with
        # the original generation and never holds credits twice.
        headers = {"Idempotency-Key": idempotency_key or f"vivix-client-{uuid.uuid4()}"}
        call_timeout = None
        if wait_s:
            headers["Prefer"] = f"wait={wait_s:g}"
            call_timeout = httpx.Timeout(
                max(timeout.read or 0.0, wait_s + 15.0), connect=timeout.connect
            )
        return Call(
            "POST",
            "/api/v1/generate",
            _parse_submitted,
            "keyed",
            body=body,
            headers=headers,
            timeout=call_timeout,
        )

    @staticmethod
    def get(generation_id: str) -> Call[Generation]:
        return Call("GET", f"/api/v1/generations/{_segment(generation_id)}", _parser(Generation))

    @staticmethod
    def cancel(generation_id: str) -> Call[Generation]:
        path = f"/api/v1/generations/{_segment(generation_id)}/cancel"
        return Call("POST", path, _parser(Generation))

    @staticmethod
    def list_page(
        *,
        cursor: str | None,
        limit: int | None,
        status: str | None,
        model: str | None,
        created_after: str | None,
        created_before: str | None,
        metadata: dict[str, str] | None,
    ) -> Call[GenerationPage]:
        params = [
            (name, str(value))
            for name, value in (
                ("cursor", cursor),
                ("limit", limit),
                ("status", status),
                ("model", model),
                ("created_after", created_after),
                ("created_before", created_before),
            )
            if value is not None
        ]
        params += [(f"metadata[{k}]", v) for k, v in (metadata or {}).items()]
        return Call("GET", "/api/v1/generations", _parser(GenerationPage), params=params)

    @staticmethod
    def catalog() -> Call[Catalog]:
        return Call("GET", "/api/v1/models", _parser(Catalog))

    @staticmethod
    def model(slug: str) -> Call[Model]:
        return Call("GET", f"/api/v1/models/{_segment(slug)}", _parser(Model))

    @staticmethod
    def credits() -> Call[Credits]:
        return Call("GET", "/api/v1/credits", _parser(Credits))

    # Webhook endpoints (API.md §5.1).
    @staticmethod
    def webhooks_list() -> Call[list[WebhookEndpoint]]:
        def parse(response: httpx.Response) -> list[WebhookEndpoint]:
            data = response.json()
            items = data["data"] if isinstance(data, dict) else data
            return [WebhookEndpoint.model_validate(item) for item in items]

        return Call("GET", "/api/v1/webhooks", parse)

    @staticmethod
    def webhook_create(body: dict[str, Any]) -> Call[WebhookEndpoint]:
        return Call("POST", "/api/v1/webhooks", _parser(WebhookEndpoint), "unsafe", body=body)

    @staticmethod
    def webhook_update(endpoint_id: str, changes: dict[str, Any]) -> Call[WebhookEndpoint]:
        path = f"/api/v1/webhooks/{_segment(endpoint_id)}"
        return Call("PATCH", path, _parser(WebhookEndpoint), body=changes)

    @staticmethod
    def webhook_delete(endpoint_id: str) -> Call[None]:
        return Call("DELETE", f"/api/v1/webhooks/{_segment(endpoint_id)}", _nothing)

    @staticmethod
    def webhook_rotate(endpoint_id: str, expire_previous_now: bool) -> Call[WebhookEndpoint]:
        path = f"/api/v1/webhooks/{_segment(endpoint_id)}/rotate-secret"
        body = {"expire_previous_now": True} if expire_previous_now else {}
        return Call("POST", path, _parser(WebhookEndpoint), "unsafe", body=body)

    @staticmethod
    def webhook_test(endpoint_id: str) -> Call[WebhookDelivery]:
        path = f"/api/v1/webhooks/{_segment(endpoint_id)}/test"
        return Call("POST", path, _parser(WebhookDelivery), "unsafe", body={})

    @staticmethod
    def webhook_deliveries(
        endpoint_id: str, cursor: str | None, status: str | None, generation_id: str | None
    ) -> Call[WebhookDeliveryPage]:
        params = [
            (name, value)
            for name, value in (
                ("cursor", cursor),
                ("status", status),
                ("generation_id", generation_id),
            )
            if value is not None
        ]
        path = f"/api/v1/webhooks/{_segment(endpoint_id)}/deliveries"
        return Call("GET", path, _parser(WebhookDeliveryPage), params=params)

    @staticmethod
    def webhook_delivery(endpoint_id: str, delivery_id: str) -> Call[WebhookDelivery]:
        path = f"/api/v1/webhooks/{_segment(endpoint_id)}/deliveries/{_segment(delivery_id)}"
        return Call("GET", path, _parser(WebhookDelivery))

    @staticmethod
    def webhook_redeliver(endpoint_id: str, delivery_id: str) -> Call[WebhookDelivery]:
        path = (
            f"/api/v1/webhooks/{_segment(endpoint_id)}/deliveries/{_segment(delivery_id)}/redeliver"
        )
        return Call("POST", path, _parser(WebhookDelivery), "unsafe", body={})


def _segment(value: str) -> str:
    from urllib.parse import quote

    return quote(str(value), safe="")


def _parse_submitted(response: httpx.Response) -> Generation:
    body = response.json()
    # A 201 carries the submit's short form; fill what a pending generation implies.
    body.setdefault("params", {})
    body.setdefault("metadata", {})
    return Generation.model_validate(body)


def build_request(
    http: httpx.Client | httpx.AsyncClient, config: Settings, call: Call[Any]
) -> httpx.Request:
    return http.build_request(
        call.method,
        call.path,
        params=tuple(call.params) or None,
        json=call.body,
        headers=call.headers,
        timeout=call.timeout or config.timeout,
    )


def raise_for_error(response: httpx.Response) -> None:
    """Raises the typed error of an error response; returns for a success."""
    if response.status_code < 400:
        return
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"message": response.text[:500] or response.reason_phrase}
    code = body.get("error") if isinstance(body.get("error"), str) else None
    cls = errors.error_class(code, response.status_code)
    raise cls(
        str(body.get("message") or response.reason_phrase),
        status=response.status_code,
        code=code,
        next=body.get("next"),
        request_id=body.get("request_id") or response.headers.get("x-request-id"),
        body=body,
        headers=dict(response.headers),
    )


def retry_delay(
    config: Settings,
    call: Call[Any],
    attempt: int,
    *,
    error: errors.APIError | None = None,
    transport_error: Exception | None = None,
) -> float | None:
    """Seconds to wait before attempt `attempt + 1`, or None when the failure is final."""
    if attempt >= config.max_retries:
        return None
    if transport_error is not None:
        sent_maybe = not isinstance(transport_error, _NOT_SENT)
        if sent_maybe and call.retry == "unsafe":
            return None
        return _backoff(config, attempt)
    assert error is not None
    status = error.status
    if status == 429:
        pass  # a limit refused it: nothing happened, always safe to send again
    elif status == 503:
        if error.body.get("reason") == "not_configured":
            return None  # only the operator can fix that
    elif status in (500, 502, 504):
        if call.retry == "unsafe":
            return None
    else:
        return None
    retry_after = _retry_after_s(error)
    if retry_after is not None:
        return min(retry_after, config.max_retry_after_s)
    return _backoff(config, attempt)


def _retry_after_s(error: errors.APIError) -> float | None:
    raw = error.headers.get("retry-after") or error.headers.get("Retry-After")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None


def _backoff(config: Settings, attempt: int) -> float:
    # Exponential with "equal jitter": never less than half the step, never in lockstep.
    step = min(config.backoff_max_s, config.backoff_base_s * 2**attempt)
    return float(step / 2 + random.uniform(0, step / 2))


def wrap_transport_error(exc: httpx.TransportError) -> errors.APIConnectionError:
    if isinstance(exc, httpx.TimeoutException):
        return errors.APITimeoutError(f"timed out: {exc!r}")
    return errors.APIConnectionError(f"connection failed: {exc!r}")


@dataclass
class ServerSentEvent:
    event: str = "message"
    data: str = ""
    id: str | None = None


# A dropped event stream is opened again this many times in a row (each resuming after
# the last event seen) before `wait` falls back to polling.
STREAM_RETRIES = 3


@dataclass
class StreamPosition:
    """How far a generation's event stream got: a dropped one resumes after it."""

    last_event_id: str | None = None
    failures: int = 0  # drops in a row with no event in between

    def seen(self, event_id: str | None) -> None:
        if event_id is not None:
            self.last_event_id = event_id
        self.failures = 0

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream"}
        if self.last_event_id is not None:
            headers["Last-Event-ID"] = self.last_event_id
        return headers

    def retry_delay(self) -> float | None:
        """Seconds to wait before opening the stream again, or None: poll instead."""
        self.failures += 1
        if self.failures > STREAM_RETRIES:
            return None
        return min(0.5 * 2.0 ** (self.failures - 1), 4.0)


class SSEParser:
    """Server-Sent Events, line by line (the WHATWG algorithm, minus reconnection time)."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self.last_event_id: str | None = None

    def feed(self, line: str) -> Iterator[ServerSentEvent]:
        line = line.rstrip("\r\n")
        if not line:
            if self._data or self._event:
                if self._id is not None:
                    self.last_event_id = self._id
                yield ServerSentEvent(
                    self._event or "message", "\n".join(self._data), self.last_event_id
                )
            self._event, self._data, self._id = "", [], None
            return
        if line.startswith(":"):
            return  # a comment: keep-alive ping
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\x00" not in value:
            self._id = value


def generation_of(event: ServerSentEvent) -> Generation | None:
    if event.event not in ("generation", "progress", "message") or not event.data:
        return None
    try:
        payload = json.loads(event.data)
    except ValueError:
        return None
    if not isinstance(payload, dict) or "generation_id" not in payload:
        return None
    return Generation.model_validate(payload)


def changed(before: Generation | None, after: Generation) -> bool:
    """Worth a progress callback: the status, queue position or progress moved."""
    if before is None:
        return True
    return (before.status, before.queue_position, before.progress) != (
        after.status,
        after.queue_position,
        after.progress,
    )


STREAM_UNSUPPORTED = (errors.EndpointNotFound, errors.MethodNotAllowed)


def file_name(generation_id: str, index: int, output_url: str, content_type: str | None) -> str:
    from pathlib import PurePosixPath
    from urllib.parse import urlsplit

    suffix = PurePosixPath(urlsplit(output_url).path).suffix
    if not suffix and content_type:
        import mimetypes

        suffix = mimetypes.guess_extension(content_type.split(";")[0].strip()) or ""
    return f"{generation_id}-{index}{suffix or '.bin'}"
