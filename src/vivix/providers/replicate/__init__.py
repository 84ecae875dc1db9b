"""Replicate predictions API adapter."""

from vivix.providers.replicate.adapter import DEFAULT_BASE_URL, ReplicateAdapter

__all__ = ["DEFAULT_BASE_URL", "ReplicateAdapter"]
