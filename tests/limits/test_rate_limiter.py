"""Per-account calls-per-minute limits: counting, sharing through Redis between processes,
and degrading (reduced, logged, never unlimited) when Redis is unreachable."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import FixedWindowRateLimiter
from structlog.testing import capture_logs

from limits import RateLimitItemPerMinute
from tests.audit import (
    assert_ledger_consistent,
    generation_count,
    ledger_entry_count,
    stored_counts,
)
from tests.conftest import IN_CI, REDIS_URL
from tests.factories import account_with_key
from tests.tcp_proxy import TcpProxy
from vivix.limits.service import MemoryWindows, RateDecision, RateLimiter
from vivix.runtime import Runtime

DEGRADED_WARNING = "redis_unavailable_rate_limit_degraded"
IMAGE = {"model": "vivix-local-image", "prompt": "a paper boat on a canal"}

SHARED_TIMEOUT_S = 5.0


async def hits(limiter: RateLimiter, account_id: str, limit: int, count: int) -> list[RateDecision]:
    return [await limiter.hit(account_id, limit) for _ in range(count)]


@pytest.fixture
def redis_url() -> str:
    """The test Redis: skipped locally without VIVIX_TEST_REDIS_URL, required in CI."""
    if not REDIS_URL:
        if IN_CI:
            pytest.fail("CI=true needs VIVIX_TEST_REDIS_URL")
        pytest.skip("set VIVIX_TEST_REDIS_URL for the Redis rate-limit tests")
    return REDIS_URL


@pytest.fixture
def key_prefix() -> str:
    """A fresh key space per test: counters never leak between tests sharing one Redis."""
    return f"vivix-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def closed_port() -> int:
    """A local port with nothing listening: connections are refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A local port that accepts connections (into the backlog) and never answers: a hung
    Redis, where only the socket timeout ends a call."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield listener.getsockname()[1]


@pytest.fixture
async def limiters() -> AsyncIterator[list[RateLimiter]]:
    """Collects the limiters a test builds and closes them (and their Redis clients)."""
    built: list[RateLimiter] = []
    try:
        yield built
    finally:
        for limiter in built:
            await limiter.reset()
            await limiter.close()


def redis_outage(redis_url: str) -> TcpProxy:
    """A TCP relay to the real Redis that the test can cut and restore: Redis goes away and
    comes back on the same address, as in a restart or a network partition."""
    host_port = redis_url.split("://", 1)[1].split("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    return TcpProxy(host or "127.0.0.1", int(port or 6379))


# --- in-process (memory) counting -------------------------------------------------------


async def test_memory_limiter_allows_exactly_the_limit_then_refuses() -> None:
    limiter = RateLimiter()

    decisions = await hits(limiter, "acct-a", 3, 5)

    assert [d.allowed for d in decisions] == [True, True, True, False, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0, 0]
    assert {d.limit for d in decisions} == {3}
    # The window opened with the first call, so almost all of its minute is left.
    assert all(55 <= d.reset_after_s <= 60 for d in decisions), decisions
    assert not limiter.uses_redis
    assert await limiter.check_redis()


async def test_memory_limiter_counts_each_account_separately() -> None:
    limiter = RateLimiter()
    await hits(limiter, "acct-a", 2, 3)

    other = await limiter.hit("acct-b", 2)

    assert other.allowed
    assert other.remaining == 1
    assert not (await limiter.hit("acct-a", 2)).allowed


async def test_reset_clears_the_counters() -> None:
    limiter = RateLimiter()
    await hits(limiter, "acct-a", 2, 2)

    await limiter.reset()

    assert (await limiter.hit("acct-a", 2)).remaining == 1


class Clock:
    """Seconds since the epoch that a test moves on by hand."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_memory_windows_count_as_the_limits_library_does() -> None:
    """The library's own memory limiter is the reference: same allowed/remaining for every
    call, a new count when the limit changes, the same failure counting and clearing."""
    ours, reference = MemoryWindows(), FixedWindowRateLimiter(MemoryStorage())
    for limit, calls in [(3, 5), (2, 3), (3, 2)]:  # back to 3: its window still counts
        item = RateLimitItemPerMinute(limit)
        for _ in range(calls):
            decision = ours.decide("account", "a", limit)
            assert decision.allowed == await reference.hit(item, "account", "a")
            stats = await reference.get_window_stats(item, "account", "a")
            assert decision.remaining == stats.remaining
            assert (await ours.get_window_stats(item, "account", "a")).remaining == stats.remaining
    failures = RateLimitItemPerMinute(2, 15)
    for limiter in (ours, reference):
        assert [await limiter.hit(failures, "sign-in", "x") for _ in range(3)] == [
            True,
            True,
            False,
        ]
        await limiter.clear(failures, "sign-in", "x")
        assert (await limiter.get_window_stats(failures, "sign-in", "x")).remaining == 2


async def test_memory_window_opens_at_the_first_call_and_lasts_a_minute() -> None:
    clock = Clock()
    windows = MemoryWindows(clock)
    assert windows.decide("account", "a", 2) == RateDecision(True, 2, 1, 60)
    clock.now += 20.5
    assert windows.decide("account", "a", 2) == RateDecision(True, 2, 0, 40)
    assert windows.decide("account", "a", 2) == RateDecision(False, 2, 0, 40)
    clock.now += 39.4
    assert windows.decide("account", "a", 2) == RateDecision(False, 2, 0, 1)
    clock.now += 0.1  # the minute since the first call is over: a new window
    assert windows.decide("account", "a", 2) == RateDecision(True, 2, 1, 60)


async def test_memory_windows_forget_windows_that_are_over() -> None:
    clock = Clock()
    windows = MemoryWindows(clock)
    for account in ("a", "b", "c"):
        windows.decide("account", account, 5)
    clock.now += MemoryWindows.SWEEP_EVERY_S + 1
    windows.decide("account", "d", 5)  # the first call after the sweep interval sweeps
    assert len(windows._windows) == 1


# --- Redis: one budget for every process --------------------------------------------------


async def test_two_processes_share_one_counter_through_redis(
    redis_url: str, key_prefix: str, limiters: list[RateLimiter]
) -> None:
    # A generous socket timeout: these tests are about sharing one budget, and on a loaded
    # machine the 0.5 s default can time out a Redis call and degrade the limiter.
    first = RateLimiter(redis_url, key_prefix=key_prefix, socket_timeout_s=SHARED_TIMEOUT_S)
    second = RateLimiter(redis_url, key_prefix=key_prefix, socket_timeout_s=SHARED_TIMEOUT_S)
    limiters += [first, second]
    assert first.uses_redis
    assert await first.check_redis()

    decisions = [await (first if i % 2 == 0 else second).hit("acct-a", 6) for i in range(9)]

    assert [d.allowed for d in decisions] == [True] * 6 + [False] * 3
    assert [d.remaining for d in decisions] == [5, 4, 3, 2, 1, 0, 0, 0, 0]
    assert all(55 <= d.reset_after_s <= 60 for d in decisions), decisions
    # Another account's budget is untouched.
    assert (await second.hit("acct-b", 6)).remaining == 5


async def test_concurrent_hits_from_two_processes_never_exceed_the_limit(
    redis_url: str, key_prefix: str, limiters: list[RateLimiter]
) -> None:
    # A generous socket timeout: these tests are about sharing one budget, and on a loaded
    # machine the 0.5 s default can time out a Redis call and degrade the limiter.
    first = RateLimiter(redis_url, key_prefix=key_prefix, socket_timeout_s=SHARED_TIMEOUT_S)
    second = RateLimiter(redis_url, key_prefix=key_prefix, socket_timeout_s=SHARED_TIMEOUT_S)
    limiters += [first, second]

    decisions = await asyncio.gather(
        *((first if i % 2 == 0 else second).hit("acct-a", 25) for i in range(80))
    )

    assert sum(d.allowed for d in decisions) == 25


# --- Redis down: reduced, logged, fast, never unlimited -----------------------------------


async def test_redis_refusing_connections_degrades_to_a_reduced_limit(
    closed_port: int, limiters: list[RateLimiter]
) -> None:
    limiter = RateLimiter(f"redis://127.0.0.1:{closed_port}/0", fallback_divisor=4)
    limiters.append(limiter)

    with capture_logs() as logs:
        first = await limiter.hit("acct-a", 20)
        started = time.perf_counter()
        rest = await hits(limiter, "acct-a", 20, 29)
        elapsed = time.perf_counter() - started

    decisions = [first, *rest]
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 25
    assert {d.limit for d in decisions} == {5}  # the headers show the limit in force
    assert elapsed < 0.5, elapsed  # after the first failure Redis isn't asked on each call
    warnings = [e for e in logs if e["event"] == DEGRADED_WARNING]
    assert len(warnings) == 1, logs  # logged, not once per request
    assert warnings[0]["log_level"] == "warning"
    assert warnings[0]["fallback_divisor"] == 4
    assert limiter.uses_redis
    assert not await limiter.check_redis()


async def test_hung_redis_costs_one_timeout_then_calls_stay_fast(
    silent_port: int, limiters: list[RateLimiter]
) -> None:
    limiter = RateLimiter(
        f"redis://127.0.0.1:{silent_port}/0", fallback_divisor=4, socket_timeout_s=0.2
    )
    limiters.append(limiter)

    with capture_logs() as logs:
        started = time.perf_counter()
        first = await limiter.hit("acct-a", 20)
        first_elapsed = time.perf_counter() - started
        started = time.perf_counter()
        rest = await hits(limiter, "acct-a", 20, 19)
        rest_elapsed = time.perf_counter() - started

    assert first.allowed
    assert first.limit == 5
    assert first_elapsed < 2.0, first_elapsed  # bounded by the socket timeout
    # Asking Redis again on each call would cost 19 × 0.2 s; the limiter waits it out.
    assert rest_elapsed < 0.5, rest_elapsed
    assert sum(d.allowed for d in [first, *rest]) == 5
    assert [e["event"] for e in logs] == [DEGRADED_WARNING]


async def test_each_degraded_process_enforces_its_share_of_the_limit(
    closed_port: int, limiters: list[RateLimiter]
) -> None:
    # With the divisor set to the number of replicas, the total stays within the limit.
    replicas = [
        RateLimiter(f"redis://127.0.0.1:{closed_port}/0", fallback_divisor=2) for _ in range(2)
    ]
    limiters += replicas

    with capture_logs():
        allowed = [sum(d.allowed for d in await hits(r, "acct-a", 20, 20)) for r in replicas]

    assert allowed == [10, 10]


async def test_degraded_limit_never_drops_to_zero_or_opens_up(
    closed_port: int, limiters: list[RateLimiter]
) -> None:
    limiter = RateLimiter(f"redis://127.0.0.1:{closed_port}/0", fallback_divisor=10)
    limiters.append(limiter)

    with capture_logs():
        decisions = await hits(limiter, "acct-a", 3, 4)

    assert [d.allowed for d in decisions] == [True, False, False, False]
    assert {d.limit for d in decisions} == {1}


async def test_limiter_returns_to_redis_when_it_comes_back(
    redis_url: str, key_prefix: str, limiters: list[RateLimiter]
) -> None:
    outage = redis_outage(redis_url)
    await outage.start()
    try:
        through_relay = RateLimiter(
            f"redis://{outage.url_host}/0", fallback_divisor=4, key_prefix=key_prefix
        )
        direct = RateLimiter(  # another, unaffected process
            redis_url, key_prefix=key_prefix, socket_timeout_s=SHARED_TIMEOUT_S
        )
        limiters += [through_relay, direct]
        assert [d.remaining for d in await hits(through_relay, "acct-a", 20, 3)] == [19, 18, 17]

        await outage.cut()
        with capture_logs() as logs:
            degraded = await hits(through_relay, "acct-a", 20, 2)
        assert [(d.limit, d.remaining) for d in degraded] == [(5, 4), (5, 3)]
        assert [e["event"] for e in logs] == [DEGRADED_WARNING]

        await outage.restore()
        through_relay._redis_down_until = 0  # skip the REDIS_RETRY_AFTER_S pause
        back = await through_relay.hit("acct-a", 20)
        # The shared counter again: the 3 calls before the outage, then this one...
        assert (back.limit, back.remaining) == (20, 16)
        # ...and the other process counts on from there.
        assert (await direct.hit("acct-a", 20)).remaining == 15
    finally:
        await outage.close()


# --- the API: every call counts, over the limit is 429 RATE_LIMIT -------------------------


async def test_every_call_counts_one_hit_and_the_call_over_the_limit_gets_429(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime, credits=100, calls_per_minute=5)
    missing = "0190a3c4-0000-7000-8000-000000000000"
    calls = [
        client.get("/api/v1/credits", headers=acct.headers),
        client.get("/api/v1/models", headers=acct.headers),
        client.get("/api/v1/generations", headers=acct.headers),
        client.get(f"/api/v1/generations/{missing}", headers=acct.headers),
        client.post("/api/v1/generate", json={"model": IMAGE["model"]}, headers=acct.headers),
    ]
    responses = []
    for call in calls:  # one at a time, so the count left is exact
        responses.append(await call)

    assert [r.status_code for r in responses] == [200, 200, 200, 404, 422]
    assert [r.headers["x-ratelimit-remaining"] for r in responses] == ["4", "3", "2", "1", "0"]
    assert {r.headers["x-ratelimit-limit"] for r in responses} == {"5"}

    over = await client.post("/api/v1/generate", json=IMAGE, headers=acct.headers)

    assert over.status_code == 429
    body = over.json()
    assert body["error"] == "RATE_LIMIT"
    assert body["request_id"] == over.headers["x-request-id"]
    assert 1 <= body["retry_after"] <= 60
    assert over.headers["retry-after"] == str(body["retry_after"])
    assert over.headers["x-ratelimit-remaining"] == "0"
    assert over.headers["x-credits-balance"] == "100"
    # A rate-limited submit changes nothing: no generation, no hold.
    assert await generation_count(runtime) == 0
    assert await ledger_entry_count(runtime) == 1  # the opening grant
    assert (await client.get("/api/v1/credits", headers=acct.headers)).status_code == 429
    await assert_ledger_consistent(runtime)


async def test_one_account_over_its_limit_does_not_limit_another(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    limited = await account_with_key(runtime, calls_per_minute=1)
    other = await account_with_key(runtime, calls_per_minute=1)
    for _ in range(3):
        await client.get("/api/v1/credits", headers=limited.headers)

    response = await client.get("/api/v1/credits", headers=other.headers)

    assert response.status_code == 200
    assert response.headers["x-ratelimit-remaining"] == "0"


async def test_rate_limit_is_checked_before_the_tier(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    free = await account_with_key(runtime, tier="free", calls_per_minute=1)

    first = await client.get("/api/v1/credits", headers=free.headers)
    second = await client.get("/api/v1/credits", headers=free.headers)

    assert (first.status_code, first.json()["error"]) == (403, "TIER_LOCKED")
    assert (second.status_code, second.json()["error"]) == (429, "RATE_LIMIT")


async def test_redis_outage_serves_api_calls_under_the_reduced_limit(
    runtime: Runtime, client: httpx.AsyncClient, closed_port: int
) -> None:
    await runtime.limiter.close()
    runtime.limiter = RateLimiter(f"redis://127.0.0.1:{closed_port}/0", fallback_divisor=4)
    acct = await account_with_key(runtime, calls_per_minute=8)

    with capture_logs() as logs:
        responses = [await client.get("/api/v1/credits", headers=acct.headers) for _ in range(3)]

    assert [r.status_code for r in responses] == [200, 200, 429]
    assert [r.headers["x-ratelimit-limit"] for r in responses] == ["2", "2", "2"]
    assert responses[2].json()["error"] == "RATE_LIMIT"
    assert DEGRADED_WARNING in [e["event"] for e in logs]


async def test_with_redis_cut_off_submits_keep_working_under_the_reduced_limit(
    runtime: Runtime, client: httpx.AsyncClient, redis_url: str, key_prefix: str
) -> None:
    """Redis goes away mid-traffic (connections reset, new ones refused): submits go on
    under calls_per_minute / fallback_divisor in this process, the outage is logged once,
    and credits are untouched by it — they never depend on Redis."""
    outage = redis_outage(redis_url)
    await outage.start()
    await runtime.limiter.close()
    runtime.limiter = RateLimiter(
        f"redis://{outage.url_host}/0",
        fallback_divisor=4,
        key_prefix=key_prefix,
        socket_timeout_s=SHARED_TIMEOUT_S,
    )
    acct = await account_with_key(runtime, calls_per_minute=40, concurrent_jobs=100, credits=500)
    body = {"model": "vivix-local-image", "prompt": "through an outage"}  # 2 credits each
    try:
        before = [
            await client.post("/api/v1/generate", json=body, headers=acct.headers) for _ in range(3)
        ]
        assert [r.status_code for r in before] == [201] * 3
        assert {r.headers["x-ratelimit-limit"] for r in before} == {"40"}

        await outage.cut()
        with capture_logs() as logs:
            during = [
                await client.post("/api/v1/generate", json=body, headers=acct.headers)
                for _ in range(12)
            ]
        # 40 / 4 = 10 calls in this process's own window, then 429: degraded, never open.
        assert [r.status_code for r in during] == [201] * 10 + [429] * 2
        assert {r.headers["x-ratelimit-limit"] for r in during} == {"10"}
        assert during[-1].json()["error"] == "RATE_LIMIT"
        assert [e["event"] for e in logs].count(DEGRADED_WARNING) == 1
        assert [int(r.headers["x-credits-balance"]) for r in during[:10]] == [
            500 - 2 * n for n in range(4, 14)
        ]
    finally:
        await outage.close()
    # Read from the tables: this process's window is used up.
    assert await stored_counts(runtime, acct.id) == (500 - 2 * 13, 2 * 13, 13, 13)
    await assert_ledger_consistent(runtime)
