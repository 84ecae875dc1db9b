"""Admission under load: many simultaneous submits against one account's row lock.

Concurrency check, balance check, hold and generation row happen in one transaction under
the account lock (ARCHITECTURE.md invariant 2), so a burst can never admit more than the
credits or the concurrency limit allow, and every rejected submit leaves no trace.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import httpx

from tests.audit import assert_ledger_consistent, stored_counts
from tests.factories import AccountWithKey, account_with_key
from vivix.catalog import pricing
from vivix.catalog.params import validate_params
from vivix.runtime import Runtime

IMAGE = {"model": "vivix-local-image", "prompt": "a lighthouse in a storm", "resolution": "1K"}
BURST = 50
BURST_TIMEOUT_S = 60
NO_LIMIT = {"concurrent_jobs": 1000, "calls_per_minute": 100_000}


def price_of(runtime: Runtime, body: dict[str, Any]) -> int:
    """The catalog's estimate for `body` (no account override), as a submit will hold it."""
    model = runtime.catalog.get(body["model"])
    assert model is not None
    return pricing.estimate(model.spec, validate_params(model.spec, body), None)


async def submit_burst(
    client: httpx.AsyncClient, accounts: list[AccountWithKey], body: dict[str, Any]
) -> list[tuple[str, httpx.Response]]:
    """Every account's `BURST` submits, all in flight at once, interleaved across accounts."""
    calls = [acct for _ in range(BURST) for acct in accounts]
    async with asyncio.timeout(BURST_TIMEOUT_S):  # a lock-up fails the test, never hangs it
        responses = await asyncio.gather(
            *(client.post("/api/v1/generate", json=body, headers=acct.headers) for acct in calls)
        )
    return [(acct.id, response) for acct, response in zip(calls, responses, strict=True)]


def outcomes(results: list[tuple[str, httpx.Response]], account_id: str) -> Counter[str]:
    """Per account: how many submits were accepted (`201`) or rejected with each code."""
    counts: Counter[str] = Counter()
    for owner, response in results:
        if owner == account_id:
            counts["201" if response.status_code == 201 else error_of(response)] += 1
    return counts


def error_of(response: httpx.Response) -> str:
    body = response.json()
    return f"{response.status_code} {body.get('error')}"


async def test_burst_with_credits_for_exactly_three_admits_three(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    price = price_of(runtime, IMAGE)
    acct = await account_with_key(runtime, credits=3 * price, **NO_LIMIT)

    results = await submit_burst(client, [acct], IMAGE)

    assert outcomes(results, acct.id) == {"201": 3, "402 INSUFFICIENT_CREDITS": BURST - 3}
    for _, response in results:
        assert int(response.headers["x-credits-balance"]) >= 0
        if response.status_code == 402:
            body = response.json()
            assert body["needed"] == price
            assert 0 <= body["balance"] < price
    assert await stored_counts(runtime, acct.id) == (0, 3 * price, 3, 3)
    await assert_ledger_consistent(runtime)


async def test_burst_against_concurrency_limit_of_three_admits_three(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    price = price_of(runtime, IMAGE)
    acct = await account_with_key(
        runtime, credits=1000 * price, concurrent_jobs=3, calls_per_minute=100_000
    )

    results = await submit_burst(client, [acct], IMAGE)

    assert outcomes(results, acct.id) == {"201": 3, "429 CONCURRENCY_LIMIT": BURST - 3}
    for _, response in results:
        if response.status_code == 429:
            assert response.json()["limit"] == 3
            assert "retry-after" not in response.headers  # not a rate limit: nothing to wait
    assert await stored_counts(runtime, acct.id) == (997 * price, 3 * price, 3, 3)
    await assert_ledger_consistent(runtime)


async def test_one_account_under_pressure_does_not_reject_another(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    price = price_of(runtime, IMAGE)
    broke = await account_with_key(runtime, credits=3 * price, **NO_LIMIT)
    busy = await account_with_key(
        runtime, credits=1000 * price, concurrent_jobs=3, calls_per_minute=100_000
    )
    roomy = await account_with_key(runtime, credits=BURST * price, **NO_LIMIT)

    results = await submit_burst(client, [broke, busy, roomy], IMAGE)

    assert outcomes(results, broke.id) == {"201": 3, "402 INSUFFICIENT_CREDITS": BURST - 3}
    assert outcomes(results, busy.id) == {"201": 3, "429 CONCURRENCY_LIMIT": BURST - 3}
    assert outcomes(results, roomy.id) == {"201": BURST}
    assert await stored_counts(runtime, broke.id) == (0, 3 * price, 3, 3)
    assert await stored_counts(runtime, busy.id) == (997 * price, 3 * price, 3, 3)
    assert await stored_counts(runtime, roomy.id) == (0, BURST * price, BURST, BURST)
    await assert_ledger_consistent(runtime)
