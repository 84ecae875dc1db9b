"""Money invariants, checked straight against the tables after a scenario."""

from __future__ import annotations

from sqlalchemy import func, select

from vivix.models import ACTIVE_STATUSES, Account, Generation, LedgerEntry, LedgerKind
from vivix.runtime import Runtime


async def assert_ledger_consistent(runtime: Runtime) -> None:
    """For every account: balance = sum of its entries ≥ 0; held = holds not yet released;
    each settled generation released exactly its hold and captured ≤ it; active_jobs =
    its pending and processing generations."""
    async with runtime.db.read() as session:
        accounts = list((await session.execute(select(Account))).scalars())
        for account in accounts:
            total = (
                await session.execute(
                    select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(
                        LedgerEntry.account_id == account.id
                    )
                )
            ).scalar_one()
            assert account.balance == total, (account.name, account.balance, total)
            assert account.balance >= 0
            entries = list(
                (
                    await session.execute(
                        select(LedgerEntry).where(
                            LedgerEntry.account_id == account.id,
                            LedgerEntry.generation_id.is_not(None),
                        )
                    )
                ).scalars()
            )
            by_generation: dict[str, dict[str, int]] = {}
            for entry in entries:
                kinds = by_generation.setdefault(entry.generation_id or "", {})
                assert entry.kind not in kinds, f"two {entry.kind} entries for one generation"
                kinds[entry.kind] = entry.amount
            open_holds = 0
            for generation_id, kinds in by_generation.items():
                hold = -kinds.get(LedgerKind.HOLD.value, 0)
                assert hold > 0, generation_id
                if LedgerKind.RELEASE.value in kinds:
                    assert kinds[LedgerKind.RELEASE.value] == hold
                    assert 0 <= -kinds.get(LedgerKind.CAPTURE.value, 0) <= hold
                else:
                    assert LedgerKind.CAPTURE.value not in kinds
                    open_holds += hold
            assert account.held == open_holds, (account.name, account.held, open_holds)
            active = (
                await session.execute(
                    select(func.count())
                    .select_from(Generation)
                    .where(
                        Generation.account_id == account.id,
                        Generation.status.in_(ACTIVE_STATUSES),
                    )
                )
            ).scalar_one()
            assert account.active_jobs == active, (account.name, account.active_jobs, active)


async def ledger_entry_count(runtime: Runtime) -> int:
    async with runtime.db.read() as session:
        return int(
            (await session.execute(select(func.count()).select_from(LedgerEntry))).scalar_one()
        )


async def generation_count(runtime: Runtime) -> int:
    async with runtime.db.read() as session:
        return int(
            (await session.execute(select(func.count()).select_from(Generation))).scalar_one()
        )


async def stored_counts(runtime: Runtime, account_id: str) -> tuple[int, int, int, int]:
    """(balance, held, generation rows, hold entries) of one account, read from the tables."""
    async with runtime.db.read() as session:
        account = await session.get(Account, account_id)
        assert account is not None
        generations = (
            await session.execute(
                select(func.count())
                .select_from(Generation)
                .where(Generation.account_id == account_id)
            )
        ).scalar_one()
        holds = (
            await session.execute(
                select(func.count())
                .select_from(LedgerEntry)
                .where(
                    LedgerEntry.account_id == account_id,
                    LedgerEntry.kind == LedgerKind.HOLD.value,
                )
            )
        ).scalar_one()
    return account.balance, account.held, int(generations), int(holds)
