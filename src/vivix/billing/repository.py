from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import Row, case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from vivix.models import Account, Generation, LedgerEntry, LedgerKind


async def ledger_sum(session: AsyncSession, account_id: str) -> int:
    """Sum of all entries: an audit of the cached balance (never used on the request path)."""
    total = (
        await session.execute(
            select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(
                LedgerEntry.account_id == account_id
            )
        )
    ).scalar_one()
    return int(total)


async def list_entries(
    session: AsyncSession, account_id: str, limit: int = 100
) -> list[LedgerEntry]:
    return list(
        (
            await session.execute(
                select(LedgerEntry)
                .where(LedgerEntry.account_id == account_id)
                .order_by(LedgerEntry.id.desc())
                .limit(limit)
            )
        ).scalars()
    )


async def spend_per_day(session: AsyncSession, account_id: str, since: datetime) -> dict[date, int]:
    """Credits captured per UTC day since `since` (days without spend are absent)."""
    if session.get_bind().dialect.name == "postgresql":
        day = func.date(func.timezone("UTC", LedgerEntry.created_at))
    else:  # SQLite stores UTC text; date() takes its day
        day = func.date(LedgerEntry.created_at)
    rows = await session.execute(
        select(day.label("day"), func.sum(-LedgerEntry.amount))
        .where(
            LedgerEntry.account_id == account_id,
            LedgerEntry.kind == LedgerKind.CAPTURE.value,
            LedgerEntry.created_at >= since,
        )
        .group_by(day)
    )
    out: dict[date, int] = {}
    for value, total in rows.all():
        key = value if isinstance(value, date) else date.fromisoformat(str(value))
        out[key] = int(total or 0)
    return out


async def spend_per_model(
    session: AsyncSession, account_id: str, since: datetime
) -> list[Row[Any]]:
    """Per model since `since`: generations charged and credits captured, most first."""
    spent = func.sum(-LedgerEntry.amount).label("credits")
    query: Any = (
        select(Generation.model, func.count().label("generations"), spent)
        .join(Generation, Generation.id == LedgerEntry.generation_id)
        .where(
            LedgerEntry.account_id == account_id,
            LedgerEntry.kind == LedgerKind.CAPTURE.value,
            LedgerEntry.created_at >= since,
        )
        .group_by(Generation.model)
        .order_by(spent.desc())
    )
    return list((await session.execute(query)).all())


_LEDGER_COLUMNS = (
    LedgerEntry.id,
    LedgerEntry.created_at,
    LedgerEntry.kind,
    LedgerEntry.amount,
    LedgerEntry.generation_id,
    LedgerEntry.reason,
    Generation.model,
)


async def ledger_page(
    session: AsyncSession, account_id: str, *, before_id: int | None, limit: int
) -> list[Row[Any]]:
    """Entries newest first (keyset on the entry id), with the generation's model."""
    query: Any = (
        select(*_LEDGER_COLUMNS)
        .outerjoin(Generation, Generation.id == LedgerEntry.generation_id)
        .where(LedgerEntry.account_id == account_id)
    )
    if before_id is not None:
        query = query.where(LedgerEntry.id < before_id)
    return list((await session.execute(query.order_by(LedgerEntry.id.desc()).limit(limit))).all())


async def ledger_in_order(
    session: AsyncSession, account_id: str, *, after_id: int, limit: int
) -> list[Row[Any]]:
    """Entries oldest first after `after_id`: the export reads the whole ledger in slices."""
    query: Any = (
        select(*_LEDGER_COLUMNS)
        .outerjoin(Generation, Generation.id == LedgerEntry.generation_id)
        .where(LedgerEntry.account_id == account_id, LedgerEntry.id > after_id)
        .order_by(LedgerEntry.id)
        .limit(limit)
    )
    return list((await session.execute(query)).all())


# --- the money audit (`billing.audit`): whole-table reads, never on the request path ----


async def balances_against_ledger(session: AsyncSession) -> list[Row[Any]]:
    """Every account: id, name, balance, held, active_jobs and the sum of its entries."""
    ledger = (
        select(LedgerEntry.account_id, func.sum(LedgerEntry.amount).label("total"))
        .group_by(LedgerEntry.account_id)
        .subquery()
    )
    return list(
        (
            await session.execute(
                select(
                    Account.id,
                    Account.name,
                    Account.balance,
                    Account.held,
                    Account.active_jobs,
                    func.coalesce(ledger.c.total, 0).label("ledger_total"),
                )
                .outerjoin(ledger, ledger.c.account_id == Account.id)
                .order_by(Account.id)
            )
        ).all()
    )


def _sum_of(kind: LedgerKind) -> Any:
    return func.coalesce(func.sum(case((LedgerEntry.kind == kind.value, LedgerEntry.amount))), 0)


def _count_of(kind: LedgerKind) -> Any:
    return func.count(case((LedgerEntry.kind == kind.value, 1)))


async def generations_with_their_entries(session: AsyncSession) -> list[Row[Any]]:
    """Every generation with its money: status, estimate, credits_used and, from its
    ledger entries, the count and sum of each kind (hold, release, capture)."""
    return list(
        (
            await session.execute(
                select(
                    Generation.id,
                    Generation.account_id,
                    Generation.status,
                    Generation.credits_estimate,
                    Generation.credits_used,
                    _count_of(LedgerKind.HOLD).label("holds"),
                    _sum_of(LedgerKind.HOLD).label("held"),
                    _count_of(LedgerKind.RELEASE).label("releases"),
                    _sum_of(LedgerKind.RELEASE).label("released"),
                    _count_of(LedgerKind.CAPTURE).label("captures"),
                    _sum_of(LedgerKind.CAPTURE).label("captured"),
                )
                .outerjoin(LedgerEntry, LedgerEntry.generation_id == Generation.id)
                .group_by(Generation.id)
                .order_by(Generation.id)
            )
        ).all()
    )


async def entries_without_a_generation(session: AsyncSession) -> list[Any]:
    """Ledger entries naming a generation that does not exist."""
    return list(
        (
            await session.execute(
                select(LedgerEntry.id, LedgerEntry.account_id, LedgerEntry.generation_id)
                .outerjoin(Generation, Generation.id == LedgerEntry.generation_id)
                .where(LedgerEntry.generation_id.is_not(None), Generation.id.is_(None))
            )
        ).all()
    )
