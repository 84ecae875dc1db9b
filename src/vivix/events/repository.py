"""Reading the change feed: new rows for the hub, and a stream's resume after an id."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Row, delete, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from vivix.models import GenerationEvent

_COLUMNS = (
    GenerationEvent.id,
    GenerationEvent.account_id,
    GenerationEvent.generation_id,
    GenerationEvent.kind,
    GenerationEvent.status,
    GenerationEvent.progress,
)


async def last_id(connection: AsyncConnection) -> int:
    return int((await connection.execute(select(func.max(GenerationEvent.id)))).scalar() or 0)


async def after(connection: AsyncConnection, cursor: int, limit: int) -> list[Row[Any]]:
    """Every account's rows after `cursor`, oldest first."""
    return await _after(connection, None, cursor, limit)


async def for_generation_after(
    connection: AsyncConnection, generation_id: str, cursor: int, limit: int
) -> list[Row[Any]]:
    return await _after(connection, GenerationEvent.generation_id == generation_id, cursor, limit)


async def for_account_after(
    connection: AsyncConnection, account_id: str, cursor: int, limit: int
) -> list[Row[Any]]:
    return await _after(connection, GenerationEvent.account_id == account_id, cursor, limit)


async def _after(
    connection: AsyncConnection, condition: Any, cursor: int, limit: int
) -> list[Row[Any]]:
    query: Any = select(*_COLUMNS).where(GenerationEvent.id > cursor)
    if condition is not None:
        query = query.where(condition)
    query = query.order_by(GenerationEvent.id).limit(limit)
    return list((await connection.execute(query)).all())


async def last_for_account(connection: AsyncConnection, account_id: str) -> int:
    query = select(func.max(GenerationEvent.id)).where(GenerationEvent.account_id == account_id)
    return int((await connection.execute(query)).scalar() or 0)


def last_for_generation(generation_id: Any) -> Any:
    """The generation's newest event id, as a column to read with its row (one snapshot)."""
    return (
        select(func.coalesce(func.max(GenerationEvent.id), 0))
        .where(GenerationEvent.generation_id == generation_id)
        .scalar_subquery()
        .label("last_event_id")
    )


async def prune_before(connection: AsyncConnection, cutoff: datetime, limit: int) -> int:
    """Delete up to `limit` of the oldest rows created before `cutoff`; how many went.
    Walks the primary key from the oldest row (ids follow time), never the whole table."""
    oldest = (
        await connection.execute(
            select(GenerationEvent.id, GenerationEvent.created_at)
            .order_by(GenerationEvent.id)
            .limit(limit)
        )
    ).all()
    upto = None
    for row in oldest:
        if row.created_at >= cutoff:
            break
        upto = row.id
    if upto is None:
        return 0
    result = await connection.execute(delete(GenerationEvent).where(GenerationEvent.id <= upto))
    return int(result.rowcount or 0)
