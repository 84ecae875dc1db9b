"""Per-account calls-per-minute limits (fixed one-minute windows): `MemoryWindows` in this
process by default, the `limits` library's Redis storage when configured.

Memory by default (one process). With Redis every replica shares the counters. If
Redis fails, each process enforces a reduced limit (calls_per_minute / fallback_divisor)
on its own memory storage and logs a warning: degraded, never unlimited. After a failure
Redis is retried every few seconds rather than on every request, so an outage doesn't add
a timeout to each call.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import structlog
from limits.aio.storage import RedisStorage, Storage
from limits.aio.strategies import FixedWindowRateLimiter
from limits.util import WindowStats

from limits import RateLimitItem, RateLimitItemPerMinute

log = structlog.get_logger(__name__)
T = TypeVar("T")

REDIS_RETRY_AFTER_S = 5.0
WARN_EVERY_S = 30.0


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    reset_after_s: int


class WindowLimiter(Protocol):
    """What `RateLimiter` uses of `limits`' FixedWindowRateLimiter (which `MemoryWindows`
    also is)."""

    async def hit(self, item: RateLimitItem, *identifiers: str) -> bool: ...

    async def get_window_stats(self, item: RateLimitItem, *identifiers: str) -> WindowStats: ...

    async def clear(self, item: RateLimitItem, *identifiers: str) -> None: ...


class MemoryWindows:
    """Fixed windows in this process's memory, counted as `limits`' FixedWindowRateLimiter
    over its MemoryStorage counts them: a window opens at its key's first hit and lasts the
    item's length; the key is the identifiers plus the limit and the length (another limit
    counts afresh). `limits` took ~30 µs of CPU per call (per-key asyncio locks, a clean-up
    task scheduled on every hit, key strings built and escaped three times); `decide` is
    one dict lookup. Every caller is on the event loop's thread: no lock needed."""

    SWEEP_EVERY_S = 60.0

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._windows: dict[tuple[object, ...], list[float]] = {}  # key → [count, ends at]
        self._next_sweep = clock() + self.SWEEP_EVERY_S

    def decide(self, namespace: str, key: str, per_minute: int) -> RateDecision:
        """Count one call against `per_minute` and decide, as `RateLimiter._hit` does."""
        now = self._clock()
        count, ends_at = self._count((namespace, key, per_minute, 60), 60, now)
        reset_after = min(max(1, math.ceil(ends_at - now)), 60)
        return RateDecision(
            count <= per_minute, per_minute, max(0, per_minute - count), reset_after
        )

    def _count(
        self, window_key: tuple[object, ...], length_s: int, now: float
    ) -> tuple[int, float]:
        if now >= self._next_sweep:
            self._next_sweep = now + self.SWEEP_EVERY_S
            for old in [k for k, (_, ends_at) in self._windows.items() if ends_at <= now]:
                del self._windows[old]
        window = self._windows.get(window_key)
        if window is None or window[1] <= now:
            window = self._windows[window_key] = [0, now + length_s]
        window[0] += 1
        return int(window[0]), window[1]

    @staticmethod
    def _key(item: RateLimitItem, identifiers: tuple[str, ...]) -> tuple[object, ...]:
        return (*identifiers, item.amount, item.get_expiry())

    async def hit(self, item: RateLimitItem, *identifiers: str) -> bool:
        count, _ = self._count(self._key(item, identifiers), item.get_expiry(), self._clock())
        return count <= item.amount

    async def get_window_stats(self, item: RateLimitItem, *identifiers: str) -> WindowStats:
        now = self._clock()
        window = self._windows.get(self._key(item, identifiers))
        if window is None or window[1] <= now:
            return WindowStats(now, item.amount)
        return WindowStats(window[1], max(0, item.amount - int(window[0])))

    async def clear(self, item: RateLimitItem, *identifiers: str) -> None:
        self._windows.pop(self._key(item, identifiers), None)

    def reset(self) -> None:
        self._windows.clear()


class RateLimiter:
    def __init__(
        self,
        redis_url: str | None = None,
        *,
        fallback_divisor: int = 4,
        socket_timeout_s: float = 0.5,
        key_prefix: str = "vivix",
    ) -> None:
        self._memory = MemoryWindows()
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
            return self._memory.decide(namespace, key, reduced)
        return self._memory.decide(namespace, key, per_minute)

    async def exhausted_for(self, namespace: str, key: str, per_minute: int) -> int | None:
        """Seconds until `key` may be counted again when its window is used up, else None.
        Counts nothing."""
        limiter: WindowLimiter = self._memory
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
        self, limiter: WindowLimiter, namespace: str, key: str, per_minute: int
    ) -> RateDecision:
        item = RateLimitItemPerMinute(per_minute)
        allowed = await limiter.hit(item, namespace, key)
        stats = await limiter.get_window_stats(item, namespace, key)
        reset_after = max(1, math.ceil(stats.reset_time - time.time()))
        return RateDecision(allowed, per_minute, max(0, stats.remaining), min(reset_after, 60))

    async def count_failure(self, scope: str, key: str, allowed: int, window_minutes: int) -> None:
        """Count one failure (e.g. a wrong password) for `key`; see `failures_left`."""
        item = RateLimitItemPerMinute(allowed, window_minutes)
        await self._with_storage(lambda limiter: limiter.hit(item, scope, key))

    async def failures_left(
        self, scope: str, key: str, allowed: int, window_minutes: int
    ) -> RateDecision:
        """Whether `key` may try again: `allowed` failures per window, then refused until
        the window resets (`reset_after_s`). Counting nothing."""
        item = RateLimitItemPerMinute(allowed, window_minutes)

        async def peek(limiter: WindowLimiter) -> RateDecision:
            stats = await limiter.get_window_stats(item, scope, key)
            reset_after = max(1, math.ceil(stats.reset_time - time.time()))
            remaining = max(0, stats.remaining)
            return RateDecision(remaining > 0, allowed, remaining, reset_after)

        return await self._with_storage(peek)

    async def forget_failures(
        self, scope: str, key: str, allowed: int, window_minutes: int
    ) -> None:
        item = RateLimitItemPerMinute(allowed, window_minutes)
        await self._with_storage(lambda limiter: limiter.clear(item, scope, key))

    async def _with_storage(self, use: Callable[[WindowLimiter], Awaitable[T]]) -> T:
        """Redis when configured and up, else this process's memory (the same counts)."""
        if self._redis is not None and time.monotonic() >= self._redis_down_until:
            try:
                return await use(self._redis)
            except Exception as exc:
                self._redis_down_until = time.monotonic() + REDIS_RETRY_AFTER_S
                self._warn(exc)
        return await use(self._memory)

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
        self._memory.reset()
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
