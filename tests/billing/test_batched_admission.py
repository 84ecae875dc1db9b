"""Batched admission (group commit): concurrent submits are written together, each checked
against its own account's balance and slots as the ones before it in the batch left them.

The big race: 1,000 submits at once over 10 accounts with credits for exactly N each
admit exactly N per account; the rest get 402 INSUFFICIENT_CREDITS, and both the test
audit and `vivix audit`'s checks hold. The ledger-level tests pin the order semantics:
a batch admits exactly what one-by-one admission would.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import httpx

from tests.audit import assert_ledger_consistent, stored_counts
from tests.billing.test_admission_races import IMAGE, error_of, price_of
from tests.billing.test_ledger import admission
from tests.factories import account_with_key
from vivix.billing.audit import audit_money
from vivix.billing.ledger import Admission, KeyTaken
from vivix.kit.metrics import REGISTRY
from vivix.runtime import Runtime

ACCOUNTS = 10
SUBMITS = 1000
N = 7
RACE_TIMEOUT_S = 240


def batch_metric() -> tuple[float, float]:
    """(batches, admissions) of `vivix_admission_batch_size` in this process so far."""
    count = REGISTRY.get_sample_value("vivix_admission_batch_size_count") or 0.0
    total = REGISTRY.get_sample_value("vivix_admission_batch_size_sum") or 0.0
    return count, total


async def test_a_thousand_submits_over_ten_accounts_admit_exactly_n_each(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    price = price_of(runtime, IMAGE)
    accounts = [
        await account_with_key(
            runtime, credits=N * price, concurrent_jobs=SUBMITS, calls_per_minute=100_000
        )
        for _ in range(ACCOUNTS)
    ]
    calls = [accounts[i % ACCOUNTS] for i in range(SUBMITS)]
    batches_before, admissions_before = batch_metric()

    async with asyncio.timeout(RACE_TIMEOUT_S):  # a lock-up fails the test, never hangs it
        responses = await asyncio.gather(
            *(client.post("/api/v1/generate", json=IMAGE, headers=acct.headers) for acct in calls)
        )

    per_account: dict[str, Counter[str]] = {acct.id: Counter() for acct in accounts}
    for acct, response in zip(calls, responses, strict=True):
        per_account[acct.id]["201" if response.status_code == 201 else error_of(response)] += 1
        if response.status_code == 402:
            assert response.json()["needed"] == price
    for acct in accounts:
        assert per_account[acct.id] == {
            "201": N,
            "402 INSUFFICIENT_CREDITS": SUBMITS // ACCOUNTS - N,
        }
        assert await stored_counts(runtime, acct.id) == (0, N * price, N, N)
    await assert_ledger_consistent(runtime)
    async with runtime.db.read() as session:
        report = await audit_money(session)
    assert report.ok, report.problems

    batches, admissions = batch_metric()
    assert admissions - admissions_before == SUBMITS  # every submit asked the ledger once
    assert batches - batches_before < SUBMITS  # and some were written together


async def hold_together(runtime: Runtime, admissions: list[Admission]) -> list[object]:
    """Hand every admission to the ledger in one go: they all wait for the same writer,
    so all but (at most) the first are written in one batch."""
    return await asyncio.gather(
        *(runtime.ledger.hold(a) for a in admissions), return_exceptions=True
    )


async def test_a_batch_admits_what_one_by_one_admission_would(runtime: Runtime) -> None:
    # 25 credits: 10 fits, 20 does not (15 left), 5 fits, 10 fits, 1 does not (0 left).
    acct = await account_with_key(runtime, credits=25)
    other = await account_with_key(runtime, credits=5)
    amounts = [10, 20, 5, 10, 1]
    batches_before, admissions_before = batch_metric()

    outcomes = await hold_together(
        runtime,
        [admission(acct.id, a) for a in amounts[:2]]
        + [admission(other.id, 5)]
        + [admission(acct.id, a) for a in amounts[2:]],
    )

    assert outcomes == [15, None, 0, 10, 0, None]
    batches, admissions = batch_metric()
    assert (batches - batches_before, admissions - admissions_before) == (1, 6)  # one batch
    assert await stored_counts(runtime, acct.id) == (0, 25, 3, 3)
    assert await stored_counts(runtime, other.id) == (0, 5, 1, 1)
    await assert_ledger_consistent(runtime)


async def test_a_batch_respects_each_accounts_concurrency_limit(runtime: Runtime) -> None:
    acct = await account_with_key(runtime, credits=100)

    outcomes = await hold_together(runtime, [admission(acct.id, 1, limit=2) for _ in range(5)])

    assert outcomes == [99, 98, None, None, None]
    assert await runtime.ledger.available(acct.id) == (2, 98)
    await assert_ledger_consistent(runtime)


async def test_a_taken_idempotency_key_in_a_batch_frees_its_credits_for_the_next(
    runtime: Runtime,
) -> None:
    # Credits for two: the second submit with key k-1 is refused as taken (nothing
    # written), so the third, which one-by-one admission would admit, is admitted.
    acct = await account_with_key(runtime, credits=20)

    outcomes = await hold_together(
        runtime,
        [
            admission(acct.id, 10, key="k-1"),
            admission(acct.id, 10, key="k-1"),
            admission(acct.id, 10),
        ],
    )

    assert outcomes[0] == 10
    assert isinstance(outcomes[1], KeyTaken)
    assert outcomes[2] == 0
    assert await stored_counts(runtime, acct.id) == (0, 20, 2, 2)
    await assert_ledger_consistent(runtime)


async def test_a_refused_admission_in_a_batch_leaves_its_idempotency_key_free(
    runtime: Runtime,
) -> None:
    # One by one: the first k-1 is refused (15 credits, it needs 20) and writes nothing,
    # so the second k-1 (10 credits) is admitted; the key used by a committed
    # generation (k-0) is taken even in a batch.
    acct = await account_with_key(runtime, credits=25)
    assert await runtime.ledger.hold(admission(acct.id, 10, key="k-0")) == 15

    outcomes = await hold_together(
        runtime,
        [
            admission(acct.id, 1, key="k-0"),
            admission(acct.id, 20, key="k-1"),
            admission(acct.id, 10, key="k-1"),
            admission(acct.id, 5, key="k-1"),
        ],
    )

    assert isinstance(outcomes[0], KeyTaken)
    assert outcomes[1] is None
    assert outcomes[2] == 5
    assert isinstance(outcomes[3], KeyTaken)
    assert await stored_counts(runtime, acct.id) == (5, 20, 2, 2)
    await assert_ledger_consistent(runtime)


async def test_random_batches_match_the_same_holds_made_one_at_a_time(runtime: Runtime) -> None:
    rng = random.Random(9)
    credits = [rng.randint(0, 60) for _ in range(3)]
    plan = [(rng.randrange(3), rng.randint(0, 15), rng.randint(1, 6)) for _ in range(40)]
    batched = [await account_with_key(runtime, credits=c) for c in credits]
    one_by_one = [await account_with_key(runtime, credits=c) for c in credits]

    together = await hold_together(
        runtime, [admission(batched[i].id, amount, limit=limit) for i, amount, limit in plan]
    )
    alone = [
        await runtime.ledger.hold(admission(one_by_one[i].id, amount, limit=limit))
        for i, amount, limit in plan
    ]

    assert together == alone
    assert any(outcome is None for outcome in alone)  # some were refused: the test bites
    for a, b in zip(batched, one_by_one, strict=True):
        assert (await stored_counts(runtime, a.id)) == (await stored_counts(runtime, b.id))
    await assert_ledger_consistent(runtime)
