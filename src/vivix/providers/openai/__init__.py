"""The OpenAI Images API, and OpenAI-compatible image servers."""

from vivix.providers.openai.adapter import OpenAiImagesAdapter

__all__ = ["OpenAiImagesAdapter"]
