"""Queries behind the operations endpoints and jobs."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from vivix.models import ProviderCircuit
from vivix.models.generation import ACTIVE_STATUSES, Generation


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
