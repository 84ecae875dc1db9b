"""fal.ai queue API adapter."""

from vivix.providers.fal.adapter import DEFAULT_BASE_URL, FalAdapter

__all__ = ["DEFAULT_BASE_URL", "FalAdapter"]
