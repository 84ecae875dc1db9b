"""Queries behind the operations endpoints and jobs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from vivix.models import Account, ProviderCircuit
from vivix.models.generation import ACTIVE_STATUSES, Generation, GenerationStatus


async def schema_revision(connection: AsyncConnection) -> str | None:
    """The Alembic revision the database is at (None: never migrated)."""
    try:
        row = (await connection.execute(text("SELECT version_num FROM alembic_version"))).first()
    except Exception:
        return None
    return None if row is None else str(row[0])


async def queue_depth(connection: AsyncConnection) -> list[tuple[str, str, int]]:
    """(status, model, count) of the generations waiting or running."""
    rows = await connection.execute(
        select(Generation.status, Generation.model, func.count())
        .where(Generation.status.in_(ACTIVE_STATUSES))
        .group_by(Generation.status, Generation.model)
    )
    return [(status, model, int(count)) for status, model, count in rows]


async def circuits(connection: AsyncConnection) -> list[tuple[str, int, datetime | None]]:
    """(route, consecutive failures, open until) of every route that has had an outcome."""
    rows = await connection.execute(
        select(
            ProviderCircuit.route,
            ProviderCircuit.consecutive_failures,
            ProviderCircuit.open_until,
        )
    )
    return [(route, int(failures), until) for route, failures, until in rows]


async def lock_outputs_to_expire(
    session: AsyncSession, finished_before: datetime, limit: int
) -> list[Generation]:
    """Completed generations finished before the moment whose outputs are still stored,
    oldest first, locked (rows another worker is pruning are skipped)."""
    rows = await session.execute(
        select(Generation)
        .where(
            Generation.status == GenerationStatus.COMPLETED.value,
            Generation.completed_at < finished_before,
            Generation.expired_at.is_(None),
        )
        .order_by(Generation.completed_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(rows.scalars())


async def lock_records_to_erase(
    session: AsyncSession, finished_before: datetime, limit: int
) -> list[Generation]:
    """Finished generations (completed, failed, canceled) finished before the moment whose
    params are not erased yet and whose outputs (if any) are gone, locked."""
    rows = await session.execute(
        select(Generation)
        .where(
            Generation.status.not_in(ACTIVE_STATUSES),
            Generation.completed_at < finished_before,
            Generation.erased_at.is_(None),
            or_(
                Generation.status != GenerationStatus.COMPLETED.value,
                Generation.expired_at.is_not(None),
            ),
        )
        .order_by(Generation.completed_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(rows.scalars())


async def stored_outputs(
    session: AsyncSession,
) -> AsyncIterator[tuple[str, list[dict[str, Any]] | None]]:
    """(account id, outputs) of every completed generation whose outputs are stored,
    streamed (not all in memory at once)."""
    result = await session.stream(
        select(Generation.account_id, Generation.outputs)
        .where(
            Generation.status == GenerationStatus.COMPLETED.value,
            Generation.expired_at.is_(None),
        )
        .execution_options(yield_per=1000)
    )
    async for account_id, outputs in result:
        yield account_id, outputs


async def account_names(session: AsyncSession) -> dict[str, str]:
    rows = await session.execute(select(Account.id, Account.name))
    return {account_id: name for account_id, name in rows}
