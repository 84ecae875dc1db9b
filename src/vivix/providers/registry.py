"""Which providers exist and whether each is usable with the operator's settings."""

from __future__ import annotations

from typing import Any

import httpx

from vivix.providers.base import ProviderAdapter
from vivix.settings import Settings

LOCAL = "local"
# Providers that need only a base URL (self-hosted); the rest need an API key.
SELF_HOSTED = frozenset({"comfyui"})
KNOWN_PROVIDERS = frozenset({LOCAL, "xai", "fal", "replicate", "runware", "openai", *SELF_HOSTED})


def is_configured(name: str, settings: Settings) -> bool:
    if name == LOCAL:
        return True
    provider = settings.provider(name)
    if name in SELF_HOSTED:
        return bool(provider.base_url)
    return bool(provider.api_key)


class ProviderRegistry:
    """The adapters of one process, by provider name (only configured providers)."""

    def __init__(self, adapters: dict[str, ProviderAdapter]) -> None:
        self._adapters = adapters

    def get(self, name: str) -> ProviderAdapter | None:
        return self._adapters.get(name)

    def register(self, adapter: ProviderAdapter) -> None:
        self._adapters[adapter.name] = adapter

    async def aclose(self) -> None:
        for adapter in self._adapters.values():
            await adapter.aclose()


# Upstream adapters by provider name, imported only when the provider is configured.
ADAPTERS = {
    "fal": "vivix.providers.fal.adapter:FalAdapter",
    "replicate": "vivix.providers.replicate.adapter:ReplicateAdapter",
    "xai": "vivix.providers.xai.adapter:XaiAdapter",
    "openai": "vivix.providers.openai.adapter:OpenAiImagesAdapter",
    "runware": "vivix.providers.runware.adapter:RunwareAdapter",
    "comfyui": "vivix.providers.comfyui.adapter:ComfyUiAdapter",
}


def build_registry(settings: Settings) -> ProviderRegistry:
    """The local renderer plus an adapter for every configured upstream provider."""
    import importlib

    from vivix.providers.local.adapter import LocalAdapter

    adapters: dict[str, ProviderAdapter] = {
        LOCAL: LocalAdapter(settings.data_dir / "scratch", settings.worker.render_processes)
    }
    for name, target in ADAPTERS.items():
        if not is_configured(name, settings):
            continue
        module_name, class_name = target.split(":")
        adapter_class = getattr(importlib.import_module(module_name), class_name)
        provider = settings.provider(name)
        options: dict[str, Any] = {"max_concurrent_requests": provider.max_concurrency}
        if provider.timeout_seconds is not None:
            options["timeout"] = httpx.Timeout(provider.timeout_seconds, connect=10.0)
        adapters[name] = adapter_class(
            api_key=provider.api_key or "", base_url=provider.base_url, **options
        )
    return ProviderRegistry(adapters)
