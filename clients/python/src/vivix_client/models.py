"""Typed models of the API's requests and responses. Unknown fields are kept (servers may
add fields; they stay readable as attributes and in `model_extra`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["pending", "processing", "completed", "failed", "canceled"]
FINISHED: frozenset[str] = frozenset({"completed", "failed", "canceled"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class Output(_Model):
    url: str
    content_type: str | None = None
    bytes: int | None = None
    width: int | None = None
    height: int | None = None
    duration_s: float | None = None


class Generation(_Model):
    """A generation in whatever state it is; status-specific fields are None otherwise."""

    generation_id: str
    status: Status
    model: str
    credits_estimate: int | None = None
    created_at: datetime | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, str] = Field(default_factory=dict)
    source: str | None = None
    # pending / processing
    elapsed_ms: int | None = None
    queue_position: int | None = None
    progress: float | None = None
    eta_ms: int | None = None
    # completed
    output_url: str | None = None
    output_urls: list[str] = Field(default_factory=list)
    outputs: list[Output] = Field(default_factory=list)
    credits_used: int | None = None
    duration_ms: int | None = None
    completed_at: datetime | None = None
    # the server's retention deleted the outputs (no URLs any more)
    expired: bool = False
    expired_at: datetime | None = None
    # failed
    error: str | None = None
    message: str | None = None

    @property
    def id(self) -> str:
        return self.generation_id

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def succeeded(self) -> bool:
        return self.status == "completed"


class GenerationPage(_Model):
    data: list[Generation]
    next_cursor: str | None = None
    has_more: bool = False


class RateLimit(_Model):
    calls_per_minute: int
    concurrent_jobs: int


class CreditsBand(_Model):
    min: int
    max: int


class Model(_Model):
    """A model this key may call, with its params and price band."""

    slug: str
    name: str
    category: str
    creator: str = ""
    description: str = ""
    params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    params_schema: dict[str, Any] = Field(default_factory=dict)
    credits_band: CreditsBand
    example_request: dict[str, Any] = Field(default_factory=dict)
    available: bool = True
    unavailable_reason: str | None = None


class Catalog(_Model):
    tier: str
    credits_balance: int
    rate_limit: RateLimit
    models: list[Model]


class Credits(_Model):
    balance: int
    held: int = 0
    tier: str
    cycle_resets_at: datetime | None = None
    rate_limit: RateLimit
    spent_this_cycle: int = 0
    granted_this_cycle: int = 0


class WebhookEndpoint(_Model):
    id: str
    url: str
    description: str | None = None
    events: list[str] = Field(default_factory=list)
    include_studio: bool = False
    enabled: bool = True
    disabled_reason: str | None = None
    secret_prefix: str | None = None
    created_at: datetime | None = None
    # Only right after creation or rotation: the whole secret, shown once.
    secret: str | None = None
    previous_secret_expires_at: datetime | None = None


class WebhookAttempt(_Model):
    at: datetime | None = None
    status_code: int | None = None
    latency_ms: int | None = None
    error: str | None = None
    response_body: str | None = None


class WebhookDelivery(_Model):
    id: str
    event: str
    generation_id: str | None = None
    status: str
    attempts: int | list[WebhookAttempt] | None = None
    next_attempt_at: datetime | None = None
    last_status_code: int | None = None
    last_error: str | None = None
    last_latency_ms: int | None = None
    created_at: datetime | None = None
    delivered_at: datetime | None = None
    request_body: Any = None


class WebhookDeliveryPage(_Model):
    data: list[WebhookDelivery]
    next_cursor: str | None = None
    has_more: bool = False
