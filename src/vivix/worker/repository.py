"""Queue queries over the generations table.

A claim moves one due `pending` row to `processing` with a lease (owner + expiry). On
PostgreSQL the candidate row is selected `FOR UPDATE SKIP LOCKED`, so concurrent workers
never block on or double-claim a row; on SQLite the claim runs inside the serialized
write transaction. Every later write by the worker is guarded by `lease_owner = me AND
status = 'processing'`, so a worker that lost its lease (reaped, canceled) changes nothing.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, literal, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from vivix.events import feed
from vivix.models import Generation, GenerationStatus

PENDING = GenerationStatus.PENDING.value
PROCESSING = GenerationStatus.PROCESSING.value


async def claim_next_generation(
    session: AsyncSession, owner: str, now: datetime, lease: timedelta
) -> Generation | None:
    """One statement: lease the oldest due pending row and return it. It sits on the
    dispatch path (wake-up → claim), so no separate SELECT and ORM flush. The claim is a
    change event streams show (`processing`)."""
    due = (
        select(Generation.id)
        .where(Generation.status == PENDING, Generation.run_after <= now)
        .order_by(Generation.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    claimed = await session.execute(
        update(Generation)
        .where(Generation.id == due, Generation.status == PENDING)
        .values(
            status=PROCESSING,
            lease_owner=owner,
            lease_expires_at=now + lease,
            attempts=Generation.attempts + 1,
            started_at=func.coalesce(
                Generation.started_at, literal(now, Generation.started_at.type)
            ),
        )
        .returning(Generation)
        .execution_options(synchronize_session=False)
    )
    generation = claimed.scalar_one_or_none()
    if generation is not None:
        await feed.append(session, generation.account_id, generation.id, PROCESSING)
    return generation


async def extend_lease(
    session: AsyncSession, generation_id: str, owner: str, expires_at: datetime
) -> bool:
    """Renew the lease; False means it is no longer ours (reaped or canceled)."""
    return await update_if_leased(session, generation_id, owner, lease_expires_at=expires_at)


async def update_if_leased(
    session: AsyncSession, generation_id: str, owner: str, **values: Any
) -> bool:
    result = await session.execute(
        update(Generation)
        .where(
            Generation.id == generation_id,
            Generation.lease_owner == owner,
            Generation.status == PROCESSING,
        )
        .values(**values)
    )
    return (result.rowcount or 0) == 1  # type: ignore[attr-defined]


async def record_progress(
    session: AsyncSession, generation_id: str, owner: str, fraction: float
) -> bool:
    """Store a running generation's fraction done (clamped to 0..1), only upward: a lower
    or equal value (a late poll, a retried attempt starting over) changes nothing, so every
    reader sees progress that never goes back. True when it was stored. The one place
    progress is written: a stored value is a change event streams show (`events.feed`),
    appended with it."""
    fraction = min(1.0, max(0.0, fraction))
    account_id = (
        await session.execute(
            update(Generation)
            .where(
                Generation.id == generation_id,
                Generation.lease_owner == owner,
                Generation.status == PROCESSING,
                or_(Generation.progress.is_(None), Generation.progress < fraction),
            )
            .values(progress=fraction)
            .returning(Generation.account_id)
        )
    ).scalar_one_or_none()
    if account_id is None:
        return False
    await feed.append(
        session, account_id, generation_id, PROCESSING, kind=feed.PROGRESS, progress=fraction
    )
    return True


async def lock_leased_generation(
    session: AsyncSession, generation_id: str, owner: str
) -> Generation | None:
    """The generation locked, if it is still processing under `owner`'s lease."""
    return await _lock_processing(session, generation_id, Generation.lease_owner == owner)


async def find_generation(session: AsyncSession, generation_id: str) -> Generation | None:
    return await session.get(Generation, generation_id, populate_existing=True)


async def expired_lease_ids(
    session: AsyncSession, now: datetime, limit: int = 100
) -> list[tuple[str, str | None]]:
    """(id, lease owner) of generations whose lease expired (their worker died), oldest
    first; read without locks: each is locked and checked again in its own transaction."""
    rows = await session.execute(
        select(Generation.id, Generation.lease_owner)
        .where(Generation.status == PROCESSING, Generation.lease_expires_at < now)
        .order_by(Generation.lease_expires_at)
        .limit(limit)
    )
    return [(row.id, row.lease_owner) for row in rows]


async def lock_expired_lease(
    session: AsyncSession, generation_id: str, now: datetime
) -> Generation | None:
    """The generation locked, if it is still processing under a lease expired by `now`;
    None when it was renewed or settled, or is locked by another reaper right now
    (skipped, not waited for)."""
    return await _lock_processing(
        session, generation_id, Generation.lease_expires_at < now, skip_locked=True
    )


async def _lock_processing(
    session: AsyncSession,
    generation_id: str,
    condition: ColumnElement[bool],
    *,
    skip_locked: bool = False,
) -> Generation | None:
    return (
        await session.execute(
            select(Generation)
            .where(Generation.id == generation_id, Generation.status == PROCESSING, condition)
            .with_for_update(skip_locked=skip_locked)
            .execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()
