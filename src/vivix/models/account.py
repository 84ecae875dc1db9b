from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from vivix.models.base import Base, Credits, JsonValue


class Account(Base):
    """A tenant. `balance` and `held` are a cache of the ledger kept in the same transaction
    as every entry (reads never sum the ledger); the ledger remains the source of truth.
    `active_jobs` likewise caches the count of its pending/processing generations."""

    __tablename__ = "accounts"
    __table_args__ = (
        CheckConstraint("balance >= 0", name="balance_not_negative"),
        CheckConstraint("held >= 0", name="held_not_negative"),
        CheckConstraint("active_jobs >= 0", name="active_jobs_not_negative"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    tier: Mapped[str] = mapped_column(String(16))
    # Per-account overrides of the tier defaults; NULL = use the tier's value.
    calls_per_minute: Mapped[int | None] = mapped_column(Integer)
    concurrent_jobs: Mapped[int | None] = mapped_column(Integer)
    monthly_credits: Mapped[int | None] = mapped_column(Credits)
    balance: Mapped[int] = mapped_column(Credits, default=0)
    held: Mapped[int] = mapped_column(Credits, default=0)
    # Generations pending or processing: +1 at admission, -1 when one settles, both under
    # this row's lock, so admission checks the concurrency limit without counting rows.
    active_jobs: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    cycle_anchor: Mapped[datetime]
    cycle_started_at: Mapped[datetime]
    cycle_resets_at: Mapped[datetime]
    spent_this_cycle: Mapped[int] = mapped_column(Credits, default=0)
    granted_this_cycle: Mapped[int] = mapped_column(Credits, default=0)
    allowed_models: Mapped[list[str]] = mapped_column(JsonValue, default=list)
    # {slug: {"factor": 0.8}} or {slug: {"rows": [...pricing rows...]}}
    price_overrides: Mapped[dict[str, Any]] = mapped_column(JsonValue, default=dict)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    # Set by an operator: keys and Studio sign-ins are refused until it is cleared.
    suspended_at: Mapped[datetime | None]
