"""Queries of the operator audit log."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from vivix.models import AdminAuditEntry


def add_audit_entry(session: AsyncSession, entry: AdminAuditEntry) -> None:
    session.add(entry)


async def list_audit_entries(
    session: AsyncSession,
    *,
    limit: int,
    before_id: str | None = None,
    account_id: str | None = None,
    action: str | None = None,
    actor: str | None = None,
) -> list[AdminAuditEntry]:
    """Newest first; `limit + 1` rows so the caller knows whether there are more."""
    query = select(AdminAuditEntry).order_by(AdminAuditEntry.id.desc()).limit(limit + 1)
    if before_id is not None:
        query = query.where(AdminAuditEntry.id < before_id)
    if account_id is not None:
        query = query.where(AdminAuditEntry.account_id == account_id)
    if action is not None:
        query = query.where(AdminAuditEntry.action == action)
    if actor is not None:
        query = query.where(AdminAuditEntry.actor == actor)
    return list((await session.execute(query)).scalars())
