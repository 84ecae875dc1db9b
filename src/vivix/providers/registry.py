"""Which providers exist and whether each is usable with the operator's settings."""

from __future__ import annotations

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
