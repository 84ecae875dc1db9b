"""Queries of webhook endpoints, deliveries and attempts.

Deliveries are also the send queue. A claim is one statement: the oldest due `pending`
row of an enabled endpoint (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so concurrent workers
never block on or double-claim a row; on SQLite the serialized write transaction does the
same) gets `lease_owner` and an `attempts` bump, and its `next_attempt_at` moves past the
attempt's deadline: if its worker dies, the row is due again then. Every write after the
attempt is guarded by `lease_owner = me AND attempts = n`, so a worker whose lease was
taken over (expired, or a redeliver reset it) changes nothing but its attempt's record.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from vivix.models import DeliveryStatus, WebhookAttempt, WebhookDelivery, WebhookEndpoint

PENDING = DeliveryStatus.PENDING.value


# --- endpoints ----------------------------------------------------------------------------


async def count_endpoints(session: AsyncSession, account_id: str) -> int:
    return int(
        await session.scalar(
            select(func.count())
            .select_from(WebhookEndpoint)
            .where(WebhookEndpoint.account_id == account_id)
        )
        or 0
    )


async def list_endpoints(session: AsyncSession, account_id: str) -> list[WebhookEndpoint]:
    rows = await session.execute(
        select(WebhookEndpoint)
        .where(WebhookEndpoint.account_id == account_id)
        .order_by(WebhookEndpoint.id)
    )
    return list(rows.scalars())


async def find_endpoint(
    session: AsyncSession, account_id: str | None, endpoint_id: str, *, lock: bool = False
) -> WebhookEndpoint | None:
    """The endpoint if it belongs to `account_id` (None: any account, for operators)."""
    query = select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id)
    if account_id is not None:
        query = query.where(WebhookEndpoint.account_id == account_id)
    if lock:
        query = query.with_for_update()
    return (
        await session.execute(query.execution_options(populate_existing=True))
    ).scalar_one_or_none()


def add_endpoint(session: AsyncSession, endpoint: WebhookEndpoint) -> None:
    session.add(endpoint)


async def delete_endpoint(session: AsyncSession, endpoint_id: str) -> None:
    """The endpoint and everything queued or kept for it (pending deliveries are dropped)."""
    deliveries = select(WebhookDelivery.id).where(WebhookDelivery.endpoint_id == endpoint_id)
    await session.execute(delete(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(deliveries)))
    await session.execute(delete(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id))
    await session.execute(delete(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id))


async def enabled_endpoints(session: AsyncSession, account_id: str) -> list[WebhookEndpoint]:
    rows = await session.execute(
        select(WebhookEndpoint).where(
            WebhookEndpoint.account_id == account_id, WebhookEndpoint.enabled.is_(True)
        )
    )
    return list(rows.scalars())


# --- deliveries ---------------------------------------------------------------------------


def add_delivery(session: AsyncSession, delivery: WebhookDelivery) -> None:
    session.add(delivery)


async def list_deliveries(
    session: AsyncSession,
    endpoint_id: str,
    *,
    limit: int,
    before_id: str | None = None,
    status: str | None = None,
    generation_id: str | None = None,
) -> list[WebhookDelivery]:
    """Newest first (ids are UUIDv7); `limit` rows."""
    query = (
        select(WebhookDelivery)
        .where(WebhookDelivery.endpoint_id == endpoint_id)
        .order_by(WebhookDelivery.id.desc())
        .limit(limit)
    )
    if before_id is not None:
        query = query.where(WebhookDelivery.id < before_id)
    if status is not None:
        query = query.where(WebhookDelivery.status == status)
    if generation_id is not None:
        query = query.where(WebhookDelivery.generation_id == generation_id)
    return list((await session.execute(query)).scalars())


async def find_delivery(
    session: AsyncSession, endpoint_id: str, delivery_id: str, *, lock: bool = False
) -> WebhookDelivery | None:
    query = select(WebhookDelivery).where(
        WebhookDelivery.id == delivery_id, WebhookDelivery.endpoint_id == endpoint_id
    )
    if lock:
        query = query.with_for_update()
    return (
        await session.execute(query.execution_options(populate_existing=True))
    ).scalar_one_or_none()


async def list_attempts(session: AsyncSession, delivery_id: str) -> list[WebhookAttempt]:
    rows = await session.execute(
        select(WebhookAttempt)
        .where(WebhookAttempt.delivery_id == delivery_id)
        .order_by(WebhookAttempt.id)
    )
    return list(rows.scalars())


# --- the send queue -----------------------------------------------------------------------


async def claim_next_delivery(
    session: AsyncSession, owner: str, now: datetime, lease: timedelta
) -> WebhookDelivery | None:
    """One statement: lease the oldest due pending delivery of an enabled endpoint."""
    endpoint_enabled = exists().where(
        WebhookEndpoint.id == WebhookDelivery.endpoint_id, WebhookEndpoint.enabled.is_(True)
    )
    due = (
        select(WebhookDelivery.id)
        .where(
            WebhookDelivery.status == PENDING,
            WebhookDelivery.next_attempt_at <= now,
            endpoint_enabled,
        )
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    claimed = await session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == due,
            WebhookDelivery.status == PENDING,
            WebhookDelivery.next_attempt_at <= now,
        )
        .values(
            lease_owner=owner, next_attempt_at=now + lease, attempts=WebhookDelivery.attempts + 1
        )
        .returning(WebhookDelivery)
        .execution_options(synchronize_session=False)
    )
    return claimed.scalar_one_or_none()


async def finish_attempt(
    session: AsyncSession, delivery_id: str, owner: str, attempt: int, **values: Any
) -> bool:
    """Write an attempt's outcome if the lease is still ours; False when it is not."""
    result = await session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.lease_owner == owner,
            WebhookDelivery.attempts == attempt,
            WebhookDelivery.status == PENDING,
        )
        .values(lease_owner=None, **values)
    )
    return (result.rowcount or 0) == 1  # type: ignore[attr-defined]


async def delivery_exists(session: AsyncSession, delivery_id: str) -> bool:
    found = await session.scalar(
        select(WebhookDelivery.id).where(WebhookDelivery.id == delivery_id)
    )
    return found is not None


def add_attempt(session: AsyncSession, attempt: WebhookAttempt) -> None:
    session.add(attempt)


async def next_due_at(session: AsyncSession) -> datetime | None:
    """When the earliest pending delivery of an enabled endpoint is due (None: none)."""
    endpoint_enabled = exists().where(
        WebhookEndpoint.id == WebhookDelivery.endpoint_id, WebhookEndpoint.enabled.is_(True)
    )
    return await session.scalar(
        select(func.min(WebhookDelivery.next_attempt_at)).where(
            WebhookDelivery.status == PENDING, endpoint_enabled
        )
    )
