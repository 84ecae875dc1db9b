"""Per-account calls-per-minute limits (fixed one-minute windows) with the `limits` library.

Memory storage by default (one process). With Redis every replica shares the counters. If
Redis fails, each process enforces a reduced limit (calls_per_minute / fallback_divisor)
on its own memory storage and logs a warning: degraded, never unlimited. After a failure
Redis is retried every few seconds rather than on every request, so an outage doesn't add
a timeout to each call.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import structlog
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import FixedWindowRateLimiter

from limits import RateLimitItemPerMinute

log = structlog.get_logger(__name__)

REDIS_RETRY_AFTER_S = 5.0
WARN_EVERY_S = 30.0


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    reset_after_s: int


class RateLimiter:
    def __init__(
        self,
        redis_url: str | None = None,
        *,
        fallback_divisor: int = 4,
        socket_timeout_s: float = 0.5,
        key_prefix: str = "vivix",
    ) -> None:
        self._memory = FixedWindowRateLimiter(MemoryStorage())
        self._fallback_divisor = fallback_divisor
        self._redis_storage: Storage | None = None
        self._redis: FixedWindowRateLimiter | None = None
        if redis_url:
            self._redis_storage = RedisStorage(
                "async+" + redis_url,
                implementation="redispy",
                wrap_exceptions=True,
                key_prefix=key_prefix,
                socket_timeout=socket_timeout_s,
                socket_connect_timeout=socket_timeout_s,
            )
            self._redis = FixedWindowRateLimiter(self._redis_storage)
        self._redis_down_until = 0.0
        # -inf, not 0: monotonic time may start near 0 (a host up for < WARN_EVERY_S), and
        # the first outage must always be logged.
        self._last_warning = -math.inf

    @property
    def uses_redis(self) -> bool:
        return self._redis is not None

    async def hit(self, account_id: str, calls_per_minute: int) -> RateDecision:
        """Count one call for the account and say whether it is within the limit."""
        return await self.hit_key("account", account_id, calls_per_minute)

    async def hit_key(self, namespace: str, key: str, per_minute: int) -> RateDecision:
        """Count one event for `key` in `namespace` (e.g. failed admin sign-ins per client
        address) and say whether it is within `per_minute`."""
        if self._redis is not None and time.monotonic() >= self._redis_down_until:
            try:
                return await self._hit(self._redis, namespace, key, per_minute)
            except Exception as exc:  # any Redis failure: degrade, never open up
                self._redis_down_until = time.monotonic() + REDIS_RETRY_AFTER_S
                self._warn(exc)
        if self._redis is not None:
            reduced = max(1, per_minute // self._fallback_divisor)
            return await self._hit(self._memory, namespace, key, reduced)
        return await self._hit(self._memory, namespace, key, per_minute)

    async def exhausted_for(self, namespace: str, key: str, per_minute: int) -> int | None:
        """Seconds until `key` may be counted again when its window is used up, else None.
        Counts nothing."""
        limiter = self._memory
        limit = per_minute
        if self._redis is not None:
            if time.monotonic() >= self._redis_down_until:
                limiter = self._redis
            else:
                limit = max(1, per_minute // self._fallback_divisor)
        item = RateLimitItemPerMinute(limit)
        try:
            stats = await limiter.get_window_stats(item, namespace, key)
        except Exception as exc:
            self._redis_down_until = time.monotonic() + REDIS_RETRY_AFTER_S
            self._warn(exc)
            return await self.exhausted_for(namespace, key, per_minute)
        if stats.remaining > 0:
            return None
        return min(60, max(1, math.ceil(stats.reset_time - time.time())))

    async def _hit(
        self, limiter: FixedWindowRateLimiter, namespace: str, key: str, per_minute: int
    ) -> RateDecision:
        item = RateLimitItemPerMinute(per_minute)
        allowed = await limiter.hit(item, namespace, key)
        stats = await limiter.get_window_stats(item, namespace, key)
        reset_after = max(1, math.ceil(stats.reset_time - time.time()))
        return RateDecision(allowed, per_minute, max(0, stats.remaining), min(reset_after, 60))

    def _warn(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_warning >= WARN_EVERY_S:
            self._last_warning = now
            log.warning(
                "redis_unavailable_rate_limit_degraded",
                error=repr(exc),
                fallback_divisor=self._fallback_divisor,
            )

    async def check_redis(self) -> bool:
        if self._redis_storage is None:
            return True
        try:
            return bool(await self._redis_storage.check())
        except Exception:
            return False

    async def reset(self) -> None:
        """Clear all counters (tests and operator tooling)."""
        await self._memory.storage.reset()
        if self._redis_storage is not None:
            try:
                await self._redis_storage.reset()
            except Exception as exc:
                self._warn(exc)

    async def close(self) -> None:
        storage = self._redis_storage
        if storage is not None:
            bridge = getattr(storage, "bridge", None)
            client = getattr(bridge, "storage", None)
            if client is not None and hasattr(client, "aclose"):
                await client.aclose()
