from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from vivix.models import LedgerEntry


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
