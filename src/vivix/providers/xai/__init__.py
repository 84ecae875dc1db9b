"""xAI (Grok Imagine): synchronous image generation/editing and asynchronous video."""

from vivix.providers.xai.adapter import XaiAdapter

__all__ = ["XaiAdapter"]
