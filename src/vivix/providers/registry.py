"""Which providers exist and whether each is usable with the operator's settings."""

from __future__ import annotations

import httpx

from vivix.kit.clock import SYSTEM_CLOCK, Clock
from vivix.kit.egress import EgressGuard
from vivix.providers.base import ProviderAdapter
from vivix.providers.http import outbound_client
from vivix.providers.upstream import AdapterSetup, UpstreamAdapter
from vivix.settings import Settings

LOCAL = "local"
# Providers that need only a base URL (self-hosted); the rest need an API key.
SELF_HOSTED = frozenset({"comfyui"})
KNOWN_PROVIDERS = frozenset({LOCAL, "xai", "fal", "replicate", "runware", "openai", *SELF_HOSTED})
# Connections of the shared outbound client (each provider is capped by its max_concurrency).
SHARED_CONNECTIONS = 100


def is_configured(name: str, settings: Settings) -> bool:
    if name == LOCAL:
        return True
    provider = settings.provider(name)
    if name in SELF_HOSTED:
        return bool(provider.base_url)
    return bool(provider.api_key)


class ProviderRegistry:
    """The adapters of one process, by provider name (only configured providers), and the
    outbound HTTP client they share."""

    def __init__(
        self, adapters: dict[str, ProviderAdapter], client: httpx.AsyncClient | None = None
    ) -> None:
        self._adapters = adapters
        self._client = client

    def get(self, name: str) -> ProviderAdapter | None:
        return self._adapters.get(name)

    def register(self, adapter: ProviderAdapter) -> None:
        self._adapters[adapter.name] = adapter

    async def aclose(self) -> None:
        for adapter in self._adapters.values():
            await adapter.aclose()
        if self._client is not None:
            await self._client.aclose()


def upstream_adapters() -> dict[str, type[UpstreamAdapter]]:
    """Every upstream adapter class by provider name (imported on first use: the API
    process only asks `is_configured`)."""
    from vivix.providers.comfyui.adapter import ComfyUiAdapter
    from vivix.providers.fal.adapter import FalAdapter
    from vivix.providers.openai.adapter import OpenAiImagesAdapter
    from vivix.providers.replicate.adapter import ReplicateAdapter
    from vivix.providers.runware.adapter import RunwareAdapter
    from vivix.providers.xai.adapter import XaiAdapter

    classes: tuple[type[UpstreamAdapter], ...] = (
        FalAdapter,
        ReplicateAdapter,
        XaiAdapter,
        OpenAiImagesAdapter,
        RunwareAdapter,
        ComfyUiAdapter,
    )
    return {adapter.name: adapter for adapter in classes}


def build_registry(settings: Settings, clock: Clock = SYSTEM_CLOCK) -> ProviderRegistry:
    """The local renderer plus an adapter for every configured upstream provider, all
    upstream ones on one outbound HTTP client."""
    from vivix.providers.local.adapter import LocalAdapter

    adapters: dict[str, ProviderAdapter] = {
        LOCAL: LocalAdapter(settings.data_dir / "scratch", settings.worker.render_processes)
    }
    configured = [
        adapter for name, adapter in upstream_adapters().items() if is_configured(name, settings)
    ]
    if not configured:
        return ProviderRegistry(adapters)
    client = outbound_client(max_connections=SHARED_CONNECTIONS)
    # Output downloads follow the reference-image policy, trusted internal hosts included.
    egress = EgressGuard(allow_private_hosts=frozenset(settings.fetch.allow_private_hosts))
    for adapter_class in configured:
        setup = AdapterSetup(settings.provider(adapter_class.name), client, clock, egress=egress)
        adapters[adapter_class.name] = adapter_class(setup)
    return ProviderRegistry(adapters, client)
