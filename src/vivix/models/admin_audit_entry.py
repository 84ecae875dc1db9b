from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Index, String
from sqlalchemy.orm import Mapped, mapped_column

from vivix.models.base import Base, JsonValue


class AdminAuditEntry(Base):
    """One operator action (grant, tier or limit change, allow/deny, price override, key
    created or revoked, user change…): who did it, to what, and the fields it changed as
    they were before and after. Written in the same transaction as the change, never
    updated or deleted; ids are UUIDv7, so they sort by time."""

    __tablename__ = "admin_audit_log"
    __table_args__ = (Index("ix_admin_audit_log_account_id_id", "account_id", "id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    created_at: Mapped[datetime]
    # "admin-token@203.0.113.7", "cli:alice@ops-1", "studio:bob@example.com", "system".
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(60))
    target_type: Mapped[str] = mapped_column(String(30))
    target_id: Mapped[str] = mapped_column(String(200))
    account_id: Mapped[str | None] = mapped_column(String(36))
    before: Mapped[dict[str, Any] | None] = mapped_column(JsonValue)
    after: Mapped[dict[str, Any] | None] = mapped_column(JsonValue)
    details: Mapped[dict[str, Any] | None] = mapped_column(JsonValue)
    request_id: Mapped[str | None] = mapped_column(String(128))
