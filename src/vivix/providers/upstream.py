"""How an upstream adapter is built: one typed constructor for every provider.

An adapter class says who it is (`name`), where the provider lives (`default_base_url`,
`api_root`), how it authenticates (`auth_scheme`), its default timeout and, if it needs
one, how it reads answers worth not retrying (`classify_error`). The registry builds each
configured adapter from an `AdapterSetup`: the provider's settings section, the
process's shared outbound HTTP client and the clock retries wait on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Self

import httpx

from vivix.kit.clock import SYSTEM_CLOCK, Clock
from vivix.kit.egress import EgressGuard
from vivix.providers.base import (
    Progress,
    ProviderError,
    ProviderFatalError,
    RenderRequest,
    RenderResult,
    UpstreamHandle,
)
from vivix.providers.http import DEFAULT_TIMEOUT, ProviderHttp, outbound_client
from vivix.settings import ProviderSettings

# A connect that takes longer than this is not going to work; the rest is per provider.
CONNECT_TIMEOUT_S = 10.0


def strip_api_path(base_url: str, api_path: str | None) -> str:
    """The base URL without a trailing slash or the provider's documented API path."""
    root = base_url.rstrip("/")
    return root[: -len(api_path)] if api_path and root.endswith(api_path) else root


@dataclass(frozen=True, slots=True)
class AdapterSetup:
    """What every upstream adapter is built from."""

    settings: ProviderSettings
    client: httpx.AsyncClient  # shared by the process's adapters; whoever made it closes it
    clock: Clock = SYSTEM_CLOCK
    owns_client: bool = False  # a standalone adapter closes its own client
    # Output files off the provider's origin (CDNs, redirects) pass this guard.
    egress: EgressGuard | None = None


class UpstreamAdapter(ABC):
    """Base of the HTTP adapters (see `providers.base.ProviderAdapter` for the protocol).
    Subclasses implement submit/poll/cancel over `self._http`."""

    name: str
    default_base_url: ClassVar[str | None] = None  # None: self-hosted, base_url required
    auth_scheme: ClassVar[str] = "Bearer"
    default_timeout: ClassVar[httpx.Timeout] = DEFAULT_TIMEOUT
    # A path suffix some providers document in their base URL (`/v1`); accepted either way.
    api_path: ClassVar[str | None] = None

    def __init__(self, setup: AdapterSetup) -> None:
        settings = setup.settings
        base_url = settings.base_url or self.default_base_url
        if not base_url:
            raise ProviderFatalError(
                f"{self.name} is self-hosted: set "
                f"VIVIX_PROVIDERS__{self.name.upper()}__BASE_URL to its address"
            )
        self.base_url = self.api_root(base_url)
        self.settings = settings
        self._owns_client = setup.owns_client
        self._http = ProviderHttp(
            self.name,
            self.base_url,
            headers=(
                {"Authorization": f"{self.auth_scheme} {settings.api_key}"}
                if settings.api_key
                else None
            ),
            timeout=self.timeout_for(settings),
            max_concurrent_requests=settings.max_concurrency,
            retries=settings.retries,
            backoff_s=settings.retry_backoff_seconds,
            max_retry_after_s=settings.max_retry_after_seconds,
            classify_error=self.classify_error,
            client=setup.client,
            clock=setup.clock,
            egress=setup.egress,
        )

    @classmethod
    def standalone(
        cls,
        settings: ProviderSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> Self:
        """One adapter with a client of its own (tests, one-off tools), closed by
        `aclose`; a process's registry shares one client between its adapters."""
        return cls(AdapterSetup(settings, outbound_client(transport), clock, owns_client=True))

    @classmethod
    def api_root(cls, base_url: str) -> str:
        return strip_api_path(base_url, cls.api_path)

    @classmethod
    def timeout_for(cls, settings: ProviderSettings) -> httpx.Timeout:
        if settings.timeout_seconds is None:
            return cls.default_timeout
        return httpx.Timeout(settings.timeout_seconds, connect=CONNECT_TIMEOUT_S)

    def classify_error(self, response: httpx.Response) -> ProviderError | None:
        """ProviderHttp's `classify_error`: an answer it would retry that is final."""
        return None

    @abstractmethod
    async def submit(self, request: RenderRequest) -> UpstreamHandle: ...

    @abstractmethod
    async def find(self, request: RenderRequest) -> UpstreamHandle | None: ...

    @abstractmethod
    async def poll(
        self, handle: UpstreamHandle, request: RenderRequest
    ) -> Progress | RenderResult: ...

    @abstractmethod
    async def cancel(self, handle: UpstreamHandle) -> None: ...

    async def aclose(self) -> None:
        if self._owns_client:
            await self._http.client.aclose()
