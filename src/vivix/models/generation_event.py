from __future__ import annotations

from datetime import datetime

from sqlalchemy import Float, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from vivix.models.base import Base, BigIntId


class GenerationEvent(Base):
    """One change of a generation that event streams show (API.md §5.2): appended in the
    transaction that makes the change, so its id orders it among every change and a
    stream can resume after any id. `status` and `progress` are the generation's as of
    this change (a replayed event shows them, not today's); the rest is read from the
    generation when shown."""

    __tablename__ = "generation_events"
    __table_args__ = (
        Index("ix_generation_events_generation_id_id", "generation_id", "id"),
        Index("ix_generation_events_account_id_id", "account_id", "id"),
        # Ids never reused on SQLite either (retention may delete old rows).
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(String(36))
    generation_id: Mapped[str] = mapped_column(String(36))
    # "generation" (a status change) or "progress" (same status, new progress).
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    progress: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime]
