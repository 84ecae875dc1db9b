"""Outbound HTTP for provider adapters: one httpx client per provider with explicit
timeouts, connection limits, a cap on concurrent requests, and retries with backoff that
honour `Retry-After`.

Retries are safe only when the request can't have taken effect upstream twice: GETs and
other idempotent calls retry on connection errors, timeouts, 429 and 5xx; a submit
(`idempotent=False`) retries only when the upstream provably did not accept it (connect
errors, 429, 503), never after a read timeout — that is how we avoid paying twice.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from typing import Any
from urllib.parse import urlsplit

import httpx

from vivix.providers.base import ProviderFatalError, ProviderRetriableError

RETRIABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
NEVER_ACCEPTED_STATUSES = frozenset({429, 503})
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
MAX_DOWNLOAD_BYTES = 512 * 1024 * 1024


def parse_retry_after(value: str | None) -> float | None:
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
    return max(0.0, moment.timestamp() - time.time())


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
    ) -> None:
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        self._base_host = urlsplit(self.base_url).netloc
        self._auth_headers = dict(headers or {})
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_retry_after_s = max_retry_after_s
        self._slots = asyncio.Semaphore(max_concurrent_requests)
        self.client = httpx.AsyncClient(
            timeout=timeout,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            transport=transport,
            follow_redirects=False,
            headers={"User-Agent": "Vivix/1.0"},
        )

    def url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else f"{self.base_url}/{path.lstrip('/')}"

    def _headers_for(self, url: str, extra: dict[str, str] | None) -> dict[str, str]:
        # Credentials go only to the provider's own host, never to a CDN it links to.
        headers = dict(self._auth_headers) if urlsplit(url).netloc == self._base_host else {}
        headers.update(extra or {})
        return headers

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
    ) -> httpx.Response:
        """Send with retries; returns any non-retriable response for the adapter to map.
        Raises ProviderRetriableError when retries are exhausted."""
        url = self.url(path)
        if idempotent is None:
            idempotent = method.upper() in ("GET", "HEAD", "DELETE", "PUT", "OPTIONS")
        last_error = "no attempt made"
        retry_after: float | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self._delay(attempt, retry_after))
            try:
                async with self._slots:
                    response = await self.client.request(
                        method, url, json=json, params=params, content=content, files=files,
                        headers=self._headers_for(url, headers),
                    )
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
            if response.status_code in RETRIABLE_STATUSES:
                retry_after = parse_retry_after(response.headers.get("retry-after"))
                last_error = f"{self.provider} answered HTTP {response.status_code}: {_snippet(response)}"
                if idempotent or response.status_code in NEVER_ACCEPTED_STATUSES:
                    continue
                raise ProviderRetriableError(last_error, retry_after)
            return response
        raise ProviderRetriableError(last_error, retry_after)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_retry_after_s)
        return self.backoff_s * 2.0 ** (attempt - 1) * (0.5 + random.random() / 2)

    async def download(self, url: str, max_bytes: int = MAX_DOWNLOAD_BYTES) -> tuple[bytes, str]:
        """An output file from the provider (or its CDN): bytes and content type."""
        response = await self.request("GET", url)
        if response.status_code != 200:
            raise ProviderRetriableError(
                f"downloading the output from {self.provider} failed with HTTP {response.status_code}"
            )
        data = response.content
        if len(data) > max_bytes:
            raise ProviderFatalError(f"{self.provider} output is larger than {max_bytes} bytes")
        content_type = response.headers.get("content-type", "application/octet-stream")
        return data, content_type.split(";", 1)[0].strip().lower()

    async def aclose(self) -> None:
        await self.client.aclose()


def _snippet(response: httpx.Response, limit: int = 300) -> str:
    try:
        text = response.text
    except Exception:
        return "<unreadable body>"
    return text[:limit].replace("\n", " ")
