from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from vivix.models.base import Base


class ApiKey(Base):
    """A key is stored only as HMAC-SHA256(server secret, key); `prefix` (first 15 chars)
    identifies it in listings. Revocation is soft: `revoked_at` is set, the row stays."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str] = mapped_column(String(100), default="")
    prefix: Mapped[str] = mapped_column(String(15), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    is_test: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    # Refreshed by the auth gate at most every few minutes (not on every call).
    last_used_at: Mapped[datetime | None]
