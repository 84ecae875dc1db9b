"""Outbound HTTP for provider adapters: per provider a base URL, credentials, explicit
timeouts, a cap on concurrent requests and retries with backoff that honour
`Retry-After`, over an httpx client (the process's shared one, `outbound_client`, or its
own).

Retries are safe only when the request can't have taken effect upstream twice: GETs and
other idempotent calls retry on connection errors, timeouts, 429 and 5xx; a submit
(`idempotent=False`) retries only when the upstream provably did not accept it (connect
errors, 429, 503), never after a read timeout — that is how we avoid paying twice. An
adapter's `classify_error` sees each answer that would be retried first and can turn it
into a final error (OpenAI's 429 `insufficient_quota` is billing, not a rate limit).

Credentials go only to the provider's own origin (scheme, host and port of `base_url`).
`download` fetches an output file: it follows at most `MAX_REDIRECTS` http(s) redirects
(CDNs redirect), dropping credentials for good once a hop leaves that origin, streams the
body and stops as soon as it passes the size limit; `data:` URIs are decoded in place.
Every hop off the provider's origin passes the same egress guard as reference images
(public addresses only, the connection pinned to the checked address): a provider can't
make us fetch from our own network. The configured origin itself is trusted (the
operator chose it; a self-hosted ComfyUI lives on a private address).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import email.utils
import mimetypes
import random
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

import httpx

from vivix.kit.clock import SYSTEM_CLOCK, Clock
from vivix.kit.egress import EgressGuard, PinnedRequest, UrlRefused
from vivix.providers.base import ProviderError, ProviderFatalError, ProviderRetriableError

RETRIABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
NEVER_ACCEPTED_STATUSES = frozenset({429, 503})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# A file the host no longer has: asking again can't bring it back.
GONE_STATUSES = frozenset({404, 410})
MAX_REDIRECTS = 5
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
MAX_DOWNLOAD_BYTES = 512 * 1024 * 1024
ERROR_BODY_BYTES = 64 * 1024  # read of a streamed error answer, for its message
GENERIC_CONTENT_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})

# Turns an answer ProviderHttp would retry into a final error (None: retry as usual).
ErrorClassifier = Callable[[httpx.Response], ProviderError | None]


def outbound_client(
    transport: httpx.AsyncBaseTransport | None = None, max_connections: int = 20
) -> httpx.AsyncClient:
    """An httpx client as ProviderHttp needs it (redirects are `download`'s business)."""
    return httpx.AsyncClient(
        timeout=DEFAULT_TIMEOUT,
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
        transport=transport,
        follow_redirects=False,  # `download` follows them itself, by our credential rule
        headers={"User-Agent": "Vivix/1.0"},
    )


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


def same_origin(url: str, other: str) -> bool:
    """Scheme, host and port are equal (default ports count as written out)."""
    first, second = httpx.URL(url), httpx.URL(other)
    return (first.scheme, first.host, first.port) == (second.scheme, second.host, second.port)


class ProviderHttp:
    def __init__(
        self,
        provider: str,
        base_url: str,
        *,
        headers: dict[str, str] | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        max_connections: int = 20,
        max_concurrent_requests: int = 8,
        retries: int = 3,
        backoff_s: float = 0.5,
        max_retry_after_s: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        classify_error: ErrorClassifier | None = None,
        egress: EgressGuard | None = None,
        client: httpx.AsyncClient | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        """`client`: a shared client (the caller closes it); without one, ProviderHttp
        makes and closes its own (with `transport` and `max_connections`)."""
        self.provider = provider
        self.egress = egress or EgressGuard()
        self.base_url = base_url.rstrip("/")
        self._auth_headers = dict(headers or {})
        self.timeout = timeout
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_retry_after_s = max_retry_after_s
        self.classify_error = classify_error
        self.clock = clock
        self._slots = asyncio.Semaphore(max_concurrent_requests)
        self._owns_client = client is None
        self.client = client or outbound_client(transport, max_connections)

    def at(self, base_url: str) -> ProviderHttp:
        """The same credentials, retry rules, request slots and (shared, never closed here)
        client for another root of the same provider (fal's Platform API next to its queue)."""
        sibling = copy.copy(self)
        sibling.base_url = base_url.rstrip("/")
        sibling._owns_client = False
        return sibling

    def url(self, path: str) -> str:
        return (
            path
            if path.startswith(("http://", "https://"))
            else f"{self.base_url}/{path.lstrip('/')}"
        )

    def on_base_url(self, url: str) -> str:
        """The same path and query on the configured base URL. Adapters send the URLs a
        provider hands out (and a stored handle keeps) here, so a proxy or test double at
        `base_url` sees every call and the key never goes to another host."""
        parts, base = urlsplit(url), urlsplit(self.base_url)
        if (parts.scheme, parts.netloc) == (base.scheme, base.netloc):
            return url
        path = parts.path
        if base.path and path.startswith(base.path + "/"):
            path = path[len(base.path) :]
        query = f"?{parts.query}" if parts.query else ""
        return f"{self.base_url}{path}{query}"

    def _own_origin(self, url: str) -> bool:
        return same_origin(url, self.base_url)

    async def request(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool | None = None,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        files: Any = None,
        classify_error: ErrorClassifier | None = None,
        request_timeout: httpx.Timeout | None = None,
    ) -> httpx.Response:
        """Send with retries; returns any non-retriable response for the adapter to map.
        Raises ProviderRetriableError when retries are exhausted, or what `classify_error`
        (this call's, else the client's) makes of a retriable answer. `request_timeout`
        replaces the client's for this call (e.g. a create the provider holds open)."""
        url = self.url(path)
        if idempotent is None:
            idempotent = method.upper() in ("GET", "HEAD", "DELETE", "PUT", "OPTIONS")
        return await self._send(
            method,
            url,
            idempotent=idempotent,
            credentials=self._own_origin(url),
            classify_error=classify_error or self.classify_error,
            json=json,
            params=params,
            headers=headers,
            content=content,
            files=files,
            timeout=self.timeout if request_timeout is None else request_timeout,
        )

    async def _send(
        self,
        method: str,
        url: str,
        *,
        idempotent: bool,
        credentials: bool,
        classify_error: ErrorClassifier | None = None,
        stream: bool = False,
        headers: dict[str, str] | None = None,
        **body: Any,
    ) -> httpx.Response:
        """The retry loop. With `stream`, the returned response's body is unread: the
        caller reads and closes it (outside the request slot, so a long download doesn't
        hold up status checks; the connection pool still bounds them)."""
        sent_headers = {**(self._auth_headers if credentials else {}), **(headers or {})}
        body.setdefault("timeout", self.timeout)  # the client may be shared: say ours
        last_error = "no attempt made"
        retry_after: float | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                await self.clock.sleep(self._delay(attempt, retry_after))
            outgoing = self.client.build_request(method, url, headers=sent_headers, **body)
            try:
                async with self._slots:
                    response = await self.client.send(outgoing, stream=stream)
            except httpx.ConnectError as exc:
                last_error, retry_after = f"cannot connect to {self.provider}: {exc}", None
                continue
            except httpx.TimeoutException as exc:
                last_error, retry_after = f"{self.provider} timed out ({type(exc).__name__})", None
                if idempotent or isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
                    continue
                raise ProviderRetriableError(last_error) from None
            except httpx.TransportError as exc:
                last_error, retry_after = f"{self.provider} connection failed: {exc!r}", None
                if idempotent:
                    continue
                raise ProviderRetriableError(last_error) from None
            if response.status_code not in RETRIABLE_STATUSES:
                return response
            if stream:
                response = await _buffered(response, ERROR_BODY_BYTES)
            if classify_error is not None and (final := classify_error(response)) is not None:
                raise final
            retry_after = parse_retry_after(response.headers.get("retry-after"), self.clock.time())
            last_error = (
                f"{self.provider} answered HTTP {response.status_code}: {_snippet(response)}"
            )
            if idempotent or response.status_code in NEVER_ACCEPTED_STATUSES:
                continue
            raise ProviderRetriableError(last_error, retry_after)
        raise ProviderRetriableError(last_error, retry_after)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_retry_after_s)
        return self.backoff_s * 2.0 ** (attempt - 1) * (0.5 + random.random() / 2)

    async def download(self, url: str, max_bytes: int = MAX_DOWNLOAD_BYTES) -> tuple[bytes, str]:
        """An output file from the provider (or its CDN): bytes and content type.

        Raises ProviderRetriableError when it can't be fetched now (the same URL may work
        on a later poll), with `resubmit=True` when the host says the file is gone (404,
        410): polling the same job again would only find the same dead URL."""
        if url.startswith("data:"):
            return decode_data_uri(url, self.provider)
        last_error = "no attempt made"
        for attempt in range(self.retries + 1):
            if attempt:
                await self.clock.sleep(self._delay(attempt, None))
            try:
                return await self._download_once(url, max_bytes)
            except _BodyCutOff as exc:
                # The answer was fine but its body broke off: a GET is safe to repeat.
                last_error = f"downloading the output from {self.provider} broke off: {exc}"
        raise ProviderRetriableError(last_error)

    async def _download_once(self, url: str, max_bytes: int) -> tuple[bytes, str]:
        credentials = self._own_origin(url)
        for _hop in range(MAX_REDIRECTS + 1):
            if urlsplit(url).scheme not in ("http", "https"):
                raise ProviderRetriableError(
                    f"{self.provider} output is at a non-HTTP address ({url[:100]})"
                )
            pinned = None if self._own_origin(url) else await self._pin(url)
            response = await self._send(
                "GET",
                url if pinned is None else pinned.url,
                idempotent=True,
                credentials=credentials,
                stream=True,
                headers=None if pinned is None else pinned.headers,
                extensions={} if pinned is None else pinned.extensions,
            )
            try:
                location = response.headers.get("location")
                if response.status_code in REDIRECT_STATUSES and location:
                    url = str(httpx.URL(url).join(location))
                    # Once the chain leaves the provider's origin it never gets the key back.
                    credentials = credentials and self._own_origin(url)
                    continue
                if response.status_code != 200:
                    raise ProviderRetriableError(
                        f"downloading the output from {self.provider} failed with HTTP "
                        f"{response.status_code}",
                        resubmit=response.status_code in GONE_STATUSES,
                    )
                data = await self._read_limited(response, max_bytes)
            finally:
                await response.aclose()
            content_type = response.headers.get("content-type", "application/octet-stream")
            return data, content_type.split(";", 1)[0].strip().lower()
        raise ProviderRetriableError(
            f"the {self.provider} output redirected more than {MAX_REDIRECTS} times"
        )

    async def _pin(self, url: str) -> PinnedRequest:
        """A URL off the provider's origin, through the egress guard."""
        try:
            return await self.egress.pin(url)
        except UrlRefused as exc:
            raise ProviderRetriableError(
                f"the {self.provider} output address was refused: {exc.reason}"
            ) from None

    async def _read_limited(self, response: httpx.Response, max_bytes: int) -> bytes:
        too_large = ProviderFatalError(f"{self.provider} output is larger than {max_bytes} bytes")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise too_large
        data = bytearray()
        try:
            async for chunk in response.aiter_bytes():
                data += chunk
                if len(data) > max_bytes:
                    raise too_large  # stop here: the rest of the body is never read
        except httpx.HTTPError as exc:  # read timeout, reset, truncated or undecodable body
            raise _BodyCutOff(repr(exc)) from None
        return bytes(data)

    async def aclose(self) -> None:
        if self._owns_client:
            await self.client.aclose()


class _BodyCutOff(Exception):
    """A download's body failed mid-read (after the status line and headers)."""


def decode_data_uri(uri: str, provider: str) -> tuple[bytes, str]:
    """A `data:` URI's bytes and media type. An undecodable one is in the stored result
    itself, so polling the same job again can't help: `resubmit=True`."""
    header, _, payload = uri.partition(",")
    meta = header[len("data:") :].split(";")
    content_type = (meta[0] or "application/octet-stream").lower()
    try:
        data = (
            base64.b64decode(payload, validate=True)
            if "base64" in meta[1:]
            else unquote_to_bytes(payload)
        )
    except (binascii.Error, ValueError):
        raise ProviderRetriableError(
            f"{provider} returned an unreadable data URI", resubmit=True
        ) from None
    return data, content_type


def json_object_or_empty(response: httpx.Response) -> dict[str, Any]:
    """The body as a JSON object; {} for anything else (an error page, a list, nothing)."""
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def known_content_type(served: str, url: str, declared: str | None = None) -> str:
    """The served content type unless it is generic (CDNs often say octet-stream); then
    what the provider declared, else a guess from the URL's file name."""
    if served not in GENERIC_CONTENT_TYPES:
        return served
    if declared:
        return declared
    if url.startswith("data:"):
        return "application/octet-stream"
    guessed, _ = mimetypes.guess_type(urlsplit(url).path)
    return guessed or "application/octet-stream"


async def _buffered(response: httpx.Response, limit: int) -> httpx.Response:
    """A streamed answer as a small in-memory one (its first `limit` bytes), so an error
    can be read and classified without reading an unbounded body."""
    body = bytearray()
    try:
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) >= limit:
                break
    except httpx.HTTPError:
        pass  # a broken error body still has a status code worth reporting
    finally:
        await response.aclose()
    # The bytes are already decoded: drop the headers that describe the wire encoding.
    headers = [
        (key, value)
        for key, value in response.headers.multi_items()
        if key.lower() not in ("content-encoding", "content-length", "transfer-encoding")
    ]
    return httpx.Response(
        response.status_code, headers=headers, content=bytes(body[:limit]), request=response.request
    )


def _snippet(response: httpx.Response, limit: int = 300) -> str:
    try:
        text = response.text
    except Exception:
        return "<unreadable body>"
    return text[:limit].replace("\n", " ")
