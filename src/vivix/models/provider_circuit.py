from __future__ import annotations

from datetime import datetime

from sqlalchemy import Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from vivix.models.base import Base


class ProviderCircuit(Base):
    """Health of one route (provider + upstream model), shared by every process: workers
    record outcomes, API replicas skip routes whose circuit is open when admitting."""

    __tablename__ = "provider_circuits"

    route: Mapped[str] = mapped_column(String(200), primary_key=True)
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    open_until: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(String(500))
    updated_at: Mapped[datetime]
