from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from vivix.models.base import Base, Credits, JsonValue


class GenerationStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"


ACTIVE_STATUSES = (GenerationStatus.PENDING.value, GenerationStatus.PROCESSING.value)


class Generation(Base):
    """One generation; the table is also the work queue (pending rows with `run_after`
    due are claimable, a claim sets a lease that the worker renews)."""

    __tablename__ = "generations"
    __table_args__ = (
        Index("ix_generations_account_id_id", "account_id", "id"),
        Index("ix_generations_account_id_status", "account_id", "status"),
        Index("ix_generations_status_id", "status", "id"),
        # Keys are scoped to the account and the key mode (live/test), like Stripe's: a
        # key first used with a test key never replays a free test render to a live key.
        Index(
            "uq_generations_account_id_is_test_idempotency_key",
            "account_id",
            "is_test",
            "idempotency_key",
            unique=True,
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    # The key that submitted it (API), or NULL with `user_id` set (Studio).
    api_key_id: Mapped[str | None] = mapped_column(String(36))
    user_id: Mapped[str | None] = mapped_column(String(36))
    source: Mapped[str] = mapped_column(String(8), server_default=text("'api'"))
    model: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16))
    is_test: Mapped[bool] = mapped_column(Boolean, default=False)
    params: Mapped[dict[str, Any]] = mapped_column(JsonValue)
    metadata_: Mapped[dict[str, str]] = mapped_column("metadata", JsonValue, default=dict)
    credits_estimate: Mapped[int] = mapped_column(Credits)
    credits_used: Mapped[int | None] = mapped_column(Credits)
    # The price inputs in force at admission (pricing rows and factor, after the account's
    # override): settlement prices what was delivered with these, not today's.
    price_snapshot: Mapped[dict[str, Any] | None] = mapped_column(JsonValue)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    error_code: Mapped[str | None] = mapped_column(String(40))
    error_message: Mapped[str | None] = mapped_column(Text)
    # For operators, never shown to customers: the last attempt's error in full, and every
    # attempt's ({attempt, at, worker, error}, oldest first, the last 20 kept).
    last_error: Mapped[str | None] = mapped_column(Text)
    attempt_errors: Mapped[list[dict[str, Any]] | None] = mapped_column(JsonValue)
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    # Queue and engine state.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    run_after: Mapped[datetime]
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None]
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    route_index: Mapped[int | None] = mapped_column(Integer)
    provider: Mapped[str | None] = mapped_column(String(40))
    upstream_handle: Mapped[dict[str, Any] | None] = mapped_column(JsonValue)
    progress: Mapped[float | None] = mapped_column(Float)
    outputs: Mapped[list[dict[str, Any]] | None] = mapped_column(JsonValue)
    # Set when retention deleted the outputs from storage (the row and its ledger stay).
    expired_at: Mapped[datetime | None]
    # Set when retention erased the record's params, metadata and provider details.
    erased_at: Mapped[datetime | None]
    # The X-Request-Id of the submit: the worker's log lines for this job carry it too.
    request_id: Mapped[str | None] = mapped_column(String(128))
    # The submit's W3C traceparent when tracing is on: the worker's job span is its child.
    traceparent: Mapped[str | None] = mapped_column(String(64))


@dataclass(frozen=True, slots=True)
class NewGeneration:
    """The row a submit inserts (admission, `billing.ledger.Ledger.hold`); the columns not
    named here start NULL (a JSON column given None would hold JSON `null` instead)."""

    id: str
    account_id: str
    api_key_id: str | None  # None for a Studio generation (then `user_id` says who)
    model: str
    is_test: bool
    params: dict[str, Any]
    metadata: dict[str, str]
    credits_estimate: int
    idempotency_key: str | None
    request_hash: str | None
    created_at: datetime
    run_after: datetime
    status: str = GenerationStatus.PENDING.value
    attempts: int = 0
    cancel_requested: bool = False
    source: str = "api"
    user_id: str | None = None
    # The price inputs in force at admission (`catalog.pricing.freeze`).
    price_snapshot: dict[str, Any] | None = None
    request_id: str | None = None  # the submit's X-Request-Id, for the job's log lines
    traceparent: str | None = None  # the submit's span (kit.tracing), for the job's spans

    def row(self) -> dict[str, Any]:
        """Column name → value, as the INSERT takes them."""
        return {name: getattr(self, name) for name in NEW_GENERATION_COLUMNS}


NEW_GENERATION_COLUMNS = tuple(NewGeneration.__dataclass_fields__)
