"""The ledger on its own: each operation, on SQLite and on PostgreSQL, against the tables.

Every scenario ends with the ledger audit (balance = sum of entries ≥ 0, held = open holds,
each generation settled at most once, active_jobs = its active generations)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from tests.audit import assert_ledger_consistent, ledger_entry_count, stored_counts
from tests.factories import account_with_key
from vivix.billing.ledger import Admission
from vivix.kit.clock import add_months, utcnow
from vivix.kit.errors import AdminInvalid
from vivix.kit.ids import uuid7
from vivix.models import Account, Generation, GenerationStatus, LedgerEntry, NewGeneration
from vivix.runtime import Runtime

LIMIT = 5


def new_generation(account_id: str, estimate: int, key: str | None = None) -> NewGeneration:
    now = utcnow()
    return NewGeneration(
        id=uuid7(),
        account_id=account_id,
        api_key_id="key",
        model="vivix-local-image",
        is_test=False,
        params={"prompt": "ledger"},
        metadata={},
        credits_estimate=estimate,
        idempotency_key=key,
        request_hash=None if key is None else "hash",
        created_at=now,
        run_after=now,
    )


def admission(
    account_id: str, estimate: int, *, limit: int = LIMIT, key: str | None = None
) -> Admission:
    generation = new_generation(account_id, estimate, key)
    return Admission(generation, limit, generation.created_at - timedelta(hours=24))


async def end(runtime: Runtime, generation_id: str, status: GenerationStatus, charge: int) -> None:
    """What `commit_final_state` does to the row and the money, without its locking rules."""
    async with runtime.db.transaction() as session:
        generation = await session.get(Generation, generation_id)
        assert generation is not None
        generation.status = status.value
        await runtime.ledger.settle(
            session, generation.account_id, generation_id, generation.credits_estimate, charge
        )


async def entries_of(runtime: Runtime, account_id: str) -> list[tuple[str, int]]:
    async with runtime.db.read() as session:
        rows = await session.execute(
            select(LedgerEntry.kind, LedgerEntry.amount)
            .where(LedgerEntry.account_id == account_id)
            .order_by(LedgerEntry.id)
        )
        return [(kind, amount) for kind, amount in rows]


async def test_hold_takes_the_credits_and_a_slot_with_the_generation_row(
    runtime: Runtime,
) -> None:
    acct = await account_with_key(runtime, credits=100)

    balance = await runtime.ledger.hold(admission(acct.id, 30))

    assert balance == 70
    assert await stored_counts(runtime, acct.id) == (70, 30, 1, 1)
    assert await runtime.ledger.available(acct.id) == (1, 70)
    await assert_ledger_consistent(runtime)


async def test_hold_without_enough_credits_writes_nothing(runtime: Runtime) -> None:
    acct = await account_with_key(runtime, credits=29)
    before = await ledger_entry_count(runtime)

    assert await runtime.ledger.hold(admission(acct.id, 30)) is None

    assert await stored_counts(runtime, acct.id) == (29, 0, 0, 0)
    assert await ledger_entry_count(runtime) == before
    assert await runtime.ledger.available(acct.id) == (0, 29)


async def test_hold_at_the_concurrency_limit_writes_nothing(runtime: Runtime) -> None:
    acct = await account_with_key(runtime, credits=100)
    assert await runtime.ledger.hold(admission(acct.id, 10, limit=1)) == 90

    assert await runtime.ledger.hold(admission(acct.id, 10, limit=1)) is None

    assert await stored_counts(runtime, acct.id) == (90, 10, 1, 1)
    await assert_ledger_consistent(runtime)


async def test_a_free_hold_takes_a_slot_and_no_entry(runtime: Runtime) -> None:
    acct = await account_with_key(runtime, credits=0)

    assert await runtime.ledger.hold(admission(acct.id, 0)) == 0

    assert await stored_counts(runtime, acct.id) == (0, 0, 1, 0)
    assert await runtime.ledger.available(acct.id) == (1, 0)
    await assert_ledger_consistent(runtime)


async def test_a_hold_reusing_a_live_idempotency_key_fails_and_writes_nothing(
    runtime: Runtime,
) -> None:
    acct = await account_with_key(runtime, credits=100)
    assert await runtime.ledger.hold(admission(acct.id, 10, key="k-1")) == 90

    with pytest.raises(IntegrityError):
        await runtime.ledger.hold(admission(acct.id, 10, key="k-1"))

    assert await stored_counts(runtime, acct.id) == (90, 10, 1, 1)
    await assert_ledger_consistent(runtime)


async def test_a_hold_takes_over_an_idempotency_key_past_its_window(runtime: Runtime) -> None:
    acct = await account_with_key(runtime, credits=100)
    first = admission(acct.id, 10, key="k-1")
    assert await runtime.ledger.hold(first) == 90
    async with runtime.db.transaction() as session:
        await session.execute(
            update(Generation)
            .where(Generation.id == first.generation.id)
            .values(created_at=utcnow() - timedelta(hours=25))
        )

    assert await runtime.ledger.hold(admission(acct.id, 10, key="k-1")) == 80

    async with runtime.db.read() as session:
        keys = dict(
            (await session.execute(select(Generation.id, Generation.idempotency_key))).all()
        )
    assert keys[first.generation.id] is None  # the old generation gave its key up
    await assert_ledger_consistent(runtime)


async def test_settle_captures_the_charge_and_releases_the_hold_and_the_slot(
    runtime: Runtime,
) -> None:
    acct = await account_with_key(runtime, credits=100)
    held = admission(acct.id, 30)
    await runtime.ledger.hold(held)

    await end(runtime, held.generation.id, GenerationStatus.COMPLETED, 20)

    assert await stored_counts(runtime, acct.id) == (80, 0, 1, 1)
    assert await entries_of(runtime, acct.id) == [
        ("grant", 100),
        ("hold", -30),
        ("release", 30),
        ("capture", -20),
    ]
    async with runtime.db.read() as session:
        account = await session.get(Account, acct.id)
        assert account is not None
        assert (account.active_jobs, account.spent_this_cycle) == (0, 20)
    await assert_ledger_consistent(runtime)


async def test_a_second_settlement_fails_and_changes_nothing(runtime: Runtime) -> None:
    acct = await account_with_key(runtime, credits=100)
    held = admission(acct.id, 30)
    await runtime.ledger.hold(held)
    await end(runtime, held.generation.id, GenerationStatus.FAILED, 0)
    before = await stored_counts(runtime, acct.id)

    with pytest.raises(IntegrityError):
        await end(runtime, held.generation.id, GenerationStatus.COMPLETED, 30)

    assert await stored_counts(runtime, acct.id) == before == (100, 0, 1, 1)
    await assert_ledger_consistent(runtime)


async def test_a_charge_above_the_hold_is_refused(runtime: Runtime) -> None:
    acct = await account_with_key(runtime, credits=100)
    held = admission(acct.id, 30)
    await runtime.ledger.hold(held)

    with pytest.raises(ValueError, match="outside"):
        await end(runtime, held.generation.id, GenerationStatus.COMPLETED, 31)

    assert await stored_counts(runtime, acct.id) == (70, 30, 1, 1)
    await assert_ledger_consistent(runtime)


async def test_adjust_moves_either_way_but_never_below_zero(runtime: Runtime) -> None:
    acct = await account_with_key(runtime, credits=50)
    async with runtime.db.transaction() as session:
        await runtime.ledger.adjust(session, acct.id, -20, "refund reversal")
        await runtime.ledger.adjust(session, acct.id, 5, "goodwill")

    with pytest.raises(AdminInvalid, match=r"negative \(balance 35\)"):
        async with runtime.db.transaction() as session:
            await runtime.ledger.adjust(session, acct.id, -36, "too much")
    with pytest.raises(AdminInvalid):
        async with runtime.db.transaction() as session:
            await runtime.ledger.adjust(session, acct.id, 0, "nothing")

    assert (await stored_counts(runtime, acct.id))[:2] == (35, 0)
    assert await entries_of(runtime, acct.id) == [
        ("grant", 50),
        ("adjustment", -20),
        ("adjustment", 5),
    ]
    await assert_ledger_consistent(runtime)


async def test_grant_needs_a_positive_amount_and_counts_toward_the_cycle(
    runtime: Runtime,
) -> None:
    acct = await account_with_key(runtime, credits=10)
    for amount in (0, -5):
        with pytest.raises(AdminInvalid):
            async with runtime.db.transaction() as session:
                await runtime.ledger.grant(session, acct.id, amount, None)
    async with runtime.db.transaction() as session:
        await runtime.ledger.grant(session, acct.id, 15, None)

    async with runtime.db.read() as session:
        account = await session.get(Account, acct.id)
        assert account is not None
        assert (account.balance, account.granted_this_cycle) == (25, 25)
    await assert_ledger_consistent(runtime)


async def test_roll_cycles_grants_each_missed_cycle_once(runtime: Runtime) -> None:
    acct = await account_with_key(runtime, credits=0, monthly_credits=7)
    anchor = add_months(utcnow(), -3) + timedelta(hours=1)  # two boundaries passed, a third soon
    async with runtime.db.transaction() as session:
        await session.execute(
            update(Account)
            .where(Account.id == acct.id)
            .values(cycle_anchor=anchor, cycle_resets_at=add_months(anchor, 1))
        )

    async with runtime.db.transaction() as session:
        assert await runtime.ledger.roll_cycles(session, acct.id, 7)
    async with runtime.db.transaction() as session:
        assert not await runtime.ledger.roll_cycles(session, acct.id, 7)

    assert await entries_of(runtime, acct.id) == [("grant", 7), ("grant", 7)]
    async with runtime.db.read() as session:
        account = await session.get(Account, acct.id)
        assert account is not None
    assert (account.balance, account.granted_this_cycle) == (14, 7)
    assert account.cycle_started_at == add_months(anchor, 2)
    assert account.cycle_resets_at == add_months(anchor, 3)
    await assert_ledger_consistent(runtime)
