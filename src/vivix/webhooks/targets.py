"""Where webhooks may be sent: `https://` URLs whose host resolves only to public
addresses (the egress guard of `kit.egress`, the same one reference images go through).
Checked when an endpoint is saved and again on every attempt, where the request is sent
to the checked address itself (no second DNS lookup, so no rebinding gap).
`VIVIX_WEBHOOKS__ALLOW_INSECURE_TARGETS=true` admits `http://` and private or loopback
hosts (development, tests)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httpx

from vivix.kit.egress import EgressGuard, PinnedRequest, UrlRefused

if TYPE_CHECKING:
    from vivix.runtime import Runtime

MAX_URL_LENGTH = 2048


def _parse(url: str, *, insecure: bool) -> httpx.URL:
    if len(url) > MAX_URL_LENGTH:
        raise UrlRefused(f"must be at most {MAX_URL_LENGTH} characters")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        raise UrlRefused("not a valid URL") from None
    allowed = ("https", "http") if insecure else ("https",)
    if parsed.scheme not in allowed:
        raise UrlRefused(
            "must be an https:// URL"
            + ("" if insecure else " (http:// only with VIVIX_WEBHOOKS__ALLOW_INSECURE_TARGETS)")
        )
    if not parsed.host:
        raise UrlRefused("has no host")
    if parsed.userinfo:
        raise UrlRefused("must not contain credentials")
    return parsed


async def check_target(runtime: Runtime, url: str) -> None:
    """At save: raise UrlRefused (its reason is safe to show) for a URL we won't call."""
    insecure = runtime.settings.webhooks.allow_insecure_targets
    _parse(url, insecure=insecure)
    if not insecure:
        await _pin(runtime, url)


async def pin_target(runtime: Runtime, url: str) -> PinnedRequest:
    """At send: where to connect for `url` (the checked address), or UrlRefused."""
    insecure = runtime.settings.webhooks.allow_insecure_targets
    parsed = _parse(url, insecure=insecure)
    if insecure:
        return PinnedRequest(str(parsed), {"Connection": "close"}, {})
    return await _pin(runtime, url)


async def _pin(runtime: Runtime, url: str) -> PinnedRequest:
    try:
        async with asyncio.timeout(runtime.settings.fetch.resolve_timeout_seconds):
            return await EgressGuard(runtime.resolver).pin(url)
    except TimeoutError:
        raise UrlRefused("its host name did not resolve in time") from None
