"""Appending change-feed rows. Called by the repositories and services that change a
generation's status or progress, inside their transaction: a change that commits always
has its event, one that rolls back never does. Each append marks the transaction so the
database wakes this process's streams and NOTIFYs other processes once it commits
(`kit.db.Database.on_events_committed`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from vivix.kit.clock import utcnow
from vivix.kit.db import mark_events_written
from vivix.models import Base, GenerationStatus

GENERATION = "generation"  # a status change (the SSE event name)
PROGRESS = "progress"  # same status, new progress
FINAL_STATUSES = frozenset(
    {
        GenerationStatus.COMPLETED.value,
        GenerationStatus.FAILED.value,
        GenerationStatus.CANCELED.value,
    }
)

EVENTS = Base.metadata.tables["generation_events"]
INSERT_EVENT = insert(EVENTS)


def event_row(
    account_id: str,
    generation_id: str,
    status: str,
    *,
    kind: str = GENERATION,
    progress: float | None = None,
) -> dict[str, Any]:
    return {
        "account_id": account_id,
        "generation_id": generation_id,
        "kind": kind,
        "status": status,
        "progress": progress,
        "created_at": utcnow(),
    }


async def append(
    target: AsyncSession | AsyncConnection,
    account_id: str,
    generation_id: str,
    status: str,
    *,
    kind: str = GENERATION,
    progress: float | None = None,
) -> None:
    row = event_row(account_id, generation_id, status, kind=kind, progress=progress)
    await target.execute(INSERT_EVENT, row)
    mark_events_written(target)
