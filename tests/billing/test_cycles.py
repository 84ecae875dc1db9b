"""Monthly billing cycles (API.md §4), computed lazily: the first call after
`cycle_resets_at` grants the tier's credits once per missed cycle and restarts the
counters; the next reset stays anchored to the account's anchor date."""

from __future__ import annotations

import asyncio
import calendar
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import select, update

from tests.audit import assert_ledger_consistent
from tests.factories import AccountWithKey, account_with_key
from vivix.models import Account, LedgerEntry
from vivix.runtime import Runtime

PRO_MONTHLY = 15000


def add_months(moment: datetime, months: int) -> datetime:
    """Same day of the month `months` later, clamped to the month's last day."""
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    return moment.replace(
        year=year, month=month, day=min(moment.day, calendar.monthrange(year, month)[1])
    )


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


async def move_cycle(
    runtime: Runtime, account_id: str, anchor: datetime, resets_at: datetime, **counters: int
) -> None:
    """Test setup: pretend the account was created at `anchor` and its cycle ends at
    `resets_at` (in the past)."""
    async with runtime.db.transaction() as session:
        await session.execute(
            update(Account)
            .where(Account.id == account_id)
            .values(
                cycle_anchor=anchor,
                cycle_started_at=add_months(resets_at, -1),
                cycle_resets_at=resets_at,
                **counters,
            )
        )


async def cycle_grants(runtime: Runtime, account_id: str) -> list[LedgerEntry]:
    async with runtime.db.read() as session:
        return list(
            (
                await session.execute(
                    select(LedgerEntry)
                    .where(
                        LedgerEntry.account_id == account_id,
                        LedgerEntry.kind == "grant",
                        LedgerEntry.cycle_started_at.is_not(None),
                    )
                    .order_by(LedgerEntry.id)
                )
            ).scalars()
        )


async def one_month_overdue(
    runtime: Runtime, acct: AccountWithKey, hours: int = 1, **counters: int
) -> datetime:
    """Anchor the account a month and `hours` ago: exactly one reset has passed. Returns
    the reset that passed."""
    anchor = add_months(datetime.now(UTC).replace(microsecond=0), -1) - timedelta(hours=hours)
    passed = add_months(anchor, 1)
    await move_cycle(runtime, acct.id, anchor, passed, **counters)
    return passed


async def test_first_call_after_the_reset_grants_the_monthly_credits_once(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime)
    passed = await one_month_overdue(runtime, acct, spent_this_cycle=1234)
    anchor = add_months(passed, -1)

    response = await client.get("/api/v1/credits", headers=acct.headers)
    assert response.status_code == 200
    wallet = response.json()
    assert wallet["balance"] == 2 * PRO_MONTHLY
    assert response.headers["x-credits-balance"] == str(2 * PRO_MONTHLY)
    assert wallet["granted_this_cycle"] == PRO_MONTHLY
    assert wallet["spent_this_cycle"] == 0
    assert wallet["cycle_resets_at"] == iso(add_months(anchor, 2))

    grants = await cycle_grants(runtime, acct.id)
    assert len(grants) == 2  # the opening grant and this cycle's
    assert grants[-1].amount == PRO_MONTHLY
    assert grants[-1].cycle_started_at == passed

    again = (await client.get("/api/v1/credits", headers=acct.headers)).json()
    assert again == wallet
    assert len(await cycle_grants(runtime, acct.id)) == 2
    await assert_ledger_consistent(runtime)


async def test_a_call_before_the_reset_grants_nothing(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime)
    anchor = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)
    await move_cycle(runtime, acct.id, anchor, add_months(anchor, 1), spent_this_cycle=10)
    wallet = (await client.get("/api/v1/credits", headers=acct.headers)).json()
    assert wallet["balance"] == PRO_MONTHLY
    assert wallet["spent_this_cycle"] == 10
    assert wallet["cycle_resets_at"] == iso(add_months(anchor, 1))
    assert len(await cycle_grants(runtime, acct.id)) == 1


async def test_every_endpoint_rolls_the_cycle(runtime: Runtime, client: httpx.AsyncClient) -> None:
    acct = await account_with_key(runtime)
    created = await client.post(
        "/api/v1/generate",
        json={"model": "vivix-local-image", "prompt": "x"},
        headers=acct.headers,
    )
    generation_id = created.json()["generation_id"]
    calls = [
        ("GET", "/api/v1/models", None),
        ("GET", "/api/v1/generations", None),
        ("GET", f"/api/v1/generations/{generation_id}", None),
        ("POST", "/api/v1/generate", {"model": "vivix-local-audio", "prompt": "rain"}),
        ("POST", "/api/v1/generate", {"model": "no-such-model", "prompt": "x"}),  # rejected
    ]
    for number, (method, path, body) in enumerate(calls, start=2):
        await one_month_overdue(runtime, acct, hours=number)  # a new cycle start each time
        response = await client.request(method, path, json=body, headers=acct.headers)
        assert response.status_code < 500
        assert len(await cycle_grants(runtime, acct.id)) == number, path
    await assert_ledger_consistent(runtime)


async def test_missed_cycles_are_granted_one_per_cycle_clamped_to_short_months(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime)
    anchor = datetime(2024, 1, 31, 9, 30, tzinfo=UTC)
    await move_cycle(runtime, acct.id, anchor, add_months(anchor, 1), spent_this_cycle=99)

    wallet = (await client.get("/api/v1/credits", headers=acct.headers)).json()

    now = datetime.now(UTC)
    expected_starts = []
    months = 1
    while add_months(anchor, months) <= now:
        expected_starts.append(add_months(anchor, months))
        months += 1
    grants = (await cycle_grants(runtime, acct.id))[1:]  # after the opening grant
    assert [g.cycle_started_at for g in grants] == expected_starts
    assert all(g.amount == PRO_MONTHLY for g in grants)
    # Clamped to each month's end, and back to the 31st when the month has one: the day
    # follows the anchor, not the previous (clamped) reset.
    assert [g.cycle_started_at for g in grants[:4]] == [
        datetime(2024, 2, 29, 9, 30, tzinfo=UTC),
        datetime(2024, 3, 31, 9, 30, tzinfo=UTC),
        datetime(2024, 4, 30, 9, 30, tzinfo=UTC),
        datetime(2024, 5, 31, 9, 30, tzinfo=UTC),
    ]
    assert datetime(2025, 2, 28, 9, 30, tzinfo=UTC) in expected_starts
    assert wallet["balance"] == PRO_MONTHLY * (1 + len(expected_starts))
    assert wallet["granted_this_cycle"] == PRO_MONTHLY
    assert wallet["spent_this_cycle"] == 0
    assert wallet["cycle_resets_at"] == iso(add_months(anchor, months))
    await assert_ledger_consistent(runtime)


async def test_concurrent_calls_at_the_boundary_grant_exactly_once(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime)
    passed = await one_month_overdue(runtime, acct)
    responses = await asyncio.gather(
        *(client.get("/api/v1/credits", headers=acct.headers) for _ in range(10))
    )
    assert [r.status_code for r in responses] == [200] * 10
    assert {r.json()["balance"] for r in responses} == {2 * PRO_MONTHLY}
    grants = await cycle_grants(runtime, acct.id)
    assert [g.cycle_started_at for g in grants][1:] == [passed]
    await assert_ledger_consistent(runtime)


async def test_the_grant_follows_the_tier_and_the_account_override(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    ultimate = await account_with_key(runtime, tier="ultimate", credits=0)
    custom = await account_with_key(runtime, credits=0, monthly_credits=500)
    for acct, amount in ((ultimate, 60000), (custom, 500)):
        await one_month_overdue(runtime, acct)
        wallet = (await client.get("/api/v1/credits", headers=acct.headers)).json()
        assert wallet["balance"] == amount
        assert wallet["granted_this_cycle"] == amount


async def test_credits_on_hold_stay_on_hold_across_the_reset(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime)
    body = {"model": "vivix-local-image", "prompt": "x", "resolution": "4K"}
    assert (await client.post("/api/v1/generate", json=body, headers=acct.headers)).is_success
    await one_month_overdue(runtime, acct, spent_this_cycle=0)
    wallet = (await client.get("/api/v1/credits", headers=acct.headers)).json()
    assert wallet["balance"] == 2 * PRO_MONTHLY - 8
    assert wallet["held"] == 8
    await assert_ledger_consistent(runtime)
