from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from vivix.models.base import Base, BigIntId, Credits


class LedgerKind(StrEnum):
    GRANT = "grant"
    HOLD = "hold"
    CAPTURE = "capture"
    RELEASE = "release"
    ADJUSTMENT = "adjustment"


class LedgerEntry(Base):
    """Append-only credit movements, signed by their effect on the available balance:
    grant +N, hold −estimate, release +estimate (the whole hold), capture −final charge,
    adjustment ±N. Balance = sum(amount). Per generation there is at most one entry of
    each kind (unique constraint), so it is captured or released at most once; per account
    there is at most one cycle grant per cycle start."""

    __tablename__ = "ledger_entries"
    __table_args__ = (
        UniqueConstraint("generation_id", "kind"),
        UniqueConstraint("account_id", "kind", "cycle_started_at"),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(Credits)
    generation_id: Mapped[str | None] = mapped_column(String(36))
    cycle_started_at: Mapped[datetime | None]
    reason: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime]
