from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from vivix.models import ACTIVE_STATUSES, Generation, GenerationStatus

QUEUE_POSITION_CAP = 1000


async def get_for_account(session: AsyncSession, account_id: str, generation_id: str) -> Generation | None:
    return (
        await session.execute(
            select(Generation).where(
                Generation.id == generation_id, Generation.account_id == account_id
            )
        )
    ).scalar_one_or_none()


async def count_active(session: AsyncSession, account_id: str) -> int:
    return int(
        (
            await session.execute(
                select(func.count())
                .select_from(Generation)
                .where(Generation.account_id == account_id, Generation.status.in_(ACTIVE_STATUSES))
            )
        ).scalar_one()
    )


async def find_by_idempotency_key(
    session: AsyncSession, account_id: str, key: str
) -> Generation | None:
    return (
        await session.execute(
            select(Generation).where(
                Generation.account_id == account_id, Generation.idempotency_key == key
            )
        )
    ).scalar_one_or_none()


async def expire_idempotency_key(
    session: AsyncSession, account_id: str, key: str, older_than: datetime
) -> None:
    """Free a key whose 24 h replay window has passed so it can be used again."""
    await session.execute(
        update(Generation)
        .where(
            Generation.account_id == account_id,
            Generation.idempotency_key == key,
            Generation.created_at < older_than,
        )
        .values(idempotency_key=None)
    )


async def queue_position(session: AsyncSession, generation_id: str) -> int:
    """1-based place among pending generations (capped: beyond it the number means little)."""
    ahead = (
        select(Generation.id)
        .where(Generation.status == GenerationStatus.PENDING.value, Generation.id < generation_id)
        .limit(QUEUE_POSITION_CAP)
        .subquery()
    )
    return int((await session.execute(select(func.count()).select_from(ahead))).scalar_one()) + 1


async def list_for_account(
    session: AsyncSession,
    account_id: str,
    *,
    limit: int,
    before_id: str | None,
    status: str | None,
    model: str | None,
    created_after: datetime | None,
    created_before: datetime | None,
    metadata: dict[str, str],
) -> list[Generation]:
    query = select(Generation).where(Generation.account_id == account_id)
    if before_id is not None:
        query = query.where(Generation.id < before_id)
    if status is not None:
        query = query.where(Generation.status == status)
    if model is not None:
        query = query.where(Generation.model == model)
    if created_after is not None:
        query = query.where(Generation.created_at > created_after)
    if created_before is not None:
        query = query.where(Generation.created_at < created_before)
    for key, value in metadata.items():
        query = query.where(Generation.metadata_[key].as_string() == value)
    query = query.order_by(Generation.id.desc()).limit(limit)
    return list((await session.execute(query)).scalars())
