"""Runware HTTP (REST) API adapter."""

from vivix.providers.runware.adapter import DEFAULT_BASE_URL, RunwareAdapter

__all__ = ["DEFAULT_BASE_URL", "RunwareAdapter"]
