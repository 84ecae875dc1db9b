from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from vivix.models import Base, LedgerEntry, LedgerKind

_INSERT_ENTRY = insert(Base.metadata.tables["ledger_entries"])


async def insert_generation_entry(
    connection: AsyncConnection,
    account_id: str,
    generation_id: str,
    kind: LedgerKind,
    amount: int,
    created_at: datetime,
) -> None:
    await connection.execute(
        _INSERT_ENTRY,
        {
            "account_id": account_id,
            "kind": kind.value,
            "amount": amount,
            "generation_id": generation_id,
            "cycle_started_at": None,
            "reason": None,
            "created_at": created_at,
        },
    )


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
