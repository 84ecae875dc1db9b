"""Request and response bodies of /api/v1 as the OpenAPI document declares them.

The routes parse and render by hand for speed, so these models describe the wire format
rather than drive it; the test suite validates every response it sees against the
document built from them, which keeps the two in step. Response objects stay open to new
properties (clients must ignore unknown fields); the tests check them closed."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

Timestamp = Annotated[
    str,
    Field(
        pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$",
        json_schema_extra={"format": "date-time"},
        examples=["2026-05-10T12:34:56Z"],
        description="ISO 8601, UTC, with a Z suffix.",
    ),
]
GenerationId = Annotated[
    str,
    Field(json_schema_extra={"format": "uuid"}, description="UUIDv7 (sorts by creation time)."),
]
Metadata = Annotated[
    dict[Annotated[str, Field(min_length=1, max_length=64)], Annotated[str, Field(max_length=512)]],
    Field(max_length=16, description="Up to 16 string key/values, echoed back and filterable."),
]
Url = Annotated[str, Field(json_schema_extra={"format": "uri"})]

ERROR_CODES = (
    "INVALID_JSON",
    "UNAUTHORIZED",
    "KEY_INVALID",
    "KEY_REVOKED",
    "INSUFFICIENT_CREDITS",
    "TIER_LOCKED",
    "MODEL_NOT_ALLOWED",
    "MODEL_NOT_FOUND",
    "GENERATION_NOT_FOUND",
    "IDEMPOTENCY_CONFLICT",
    "NOT_CANCELABLE",
    "WEBHOOK_LIMIT",
    "WEBHOOK_NOT_FOUND",
    "PAYLOAD_TOO_LARGE",
    "UNSUPPORTED_MEDIA_TYPE",
    "INVALID_PARAMS",
    "RATE_LIMIT",
    "CONCURRENCY_LIMIT",
    "INTERNAL_ERROR",
    "PROVIDER_DOWN",
    "NOT_FOUND",
    "METHOD_NOT_ALLOWED",
    "RANGE_NOT_SATISFIABLE",
)


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Error(_Open):
    """Every error. Clients branch on `error`, never on `message`; `next` says what to do."""

    error: Literal[ERROR_CODES] = Field(description="Stable machine code.")  # type: ignore[valid-type]
    message: str
    next: str = Field(description="The remediation.")
    request_id: str = Field(description="Equals the X-Request-Id header.")
    balance: int | None = Field(None, description="INSUFFICIENT_CREDITS: available credits.")
    needed: int | None = Field(None, description="INSUFFICIENT_CREDITS: the estimate.")
    tier: str | None = Field(None, description="TIER_LOCKED: the account's tier.")
    model: str | None = Field(None, description="MODEL_NOT_ALLOWED / MODEL_NOT_FOUND.")
    status: str | None = Field(None, description="NOT_CANCELABLE: the generation's status.")
    limit: int | None = Field(
        None, description="CONCURRENCY_LIMIT: concurrent jobs; WEBHOOK_LIMIT: endpoints."
    )
    field: str | None = Field(None, description="INVALID_PARAMS: the offending field.")
    reason: str | None = Field(
        None,
        description="INVALID_PARAMS: what is wrong. PROVIDER_DOWN: `not_configured` (no "
        "Retry-After: retrying cannot help) or `circuit_open` (retry after Retry-After).",
    )
    retry_after: int | None = Field(None, description="RATE_LIMIT: seconds to wait.")


class GenerateRequest(BaseModel):
    """A submit. A model accepts exactly the params in its schema (GET /models/{slug}
    `params_schema`); anything else is 422 INVALID_PARAMS naming the field."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "model": "vivix-local-image",
                    "prompt": "a misty forest at dawn, cinematic 24mm",
                    "aspect_ratio": "16:9",
                    "number_results": 2,
                }
            ]
        },
    )

    model: str = Field(description="A model slug from GET /api/v1/models.")
    prompt: str = Field(min_length=1, max_length=2000)
    negative_prompt: str | None = Field(
        None, max_length=500, description="Dropped silently for models without it."
    )
    aspect_ratio: Literal["1:1", "4:5", "9:16", "16:9"] | None = None
    resolution: Literal["1K", "2K", "4K", "720p", "1080p", "2160p"] | None = Field(
        None, description="Images 1K/2K/4K, videos 720p/1080p/2160p; each model its subset."
    )
    duration: int | None = Field(None, description="Seconds (video/audio), in the model's range.")
    audio: bool | None = None
    reference_images: list[Url] | None = Field(None, max_length=3)
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    number_results: int | None = Field(None, ge=1, le=4, description="Images only; cost ×N.")
    metadata: Metadata | None = None


class Submitted(_Open):
    """201 Created: the generation is queued and `credits_estimate` is held."""

    generation_id: GenerationId
    status: Literal["pending"]
    model: str
    credits_estimate: int = Field(description="Held now; the final charge is at most this.")
    created_at: Timestamp


class Output(_Open):
    url: Url = Field(description="Public, unguessable, fetchable without auth.")
    content_type: str
    bytes: int
    width: int | None
    height: int | None
    duration_s: float | None


class _GenerationBase(_Open):
    generation_id: GenerationId
    model: str
    credits_estimate: int
    created_at: Timestamp
    params: dict[str, Any] = Field(description="The validated params, defaults applied.")
    metadata: Metadata
    source: Literal["api", "studio"] | None = Field(None, description="Where it was submitted.")
    expired: bool | None = Field(
        None,
        description="true once retention deleted the outputs (no URLs any more); absent before.",
    )
    expired_at: Timestamp | None = Field(None, description="When retention deleted the outputs.")


ETA_MS = (
    "Estimated milliseconds until the generation ends, from the recent run times of the "
    "same model and params class (resolution, duration bucket, number of results, live or "
    "test); null when there is no such history. Shown by the status read."
)


class PendingGeneration(_GenerationBase):
    status: Literal["pending"]
    elapsed_ms: int
    queue_position: int | None = Field(
        None, ge=1, description="Place among all pending generations, 1 = next (capped at 1000)."
    )
    eta_ms: int | None = Field(None, ge=0, description=ETA_MS)


class ProcessingGeneration(_GenerationBase):
    status: Literal["processing"]
    elapsed_ms: int
    progress: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Fraction done when the renderer or provider reports it; never goes down.",
    )
    eta_ms: int | None = Field(None, ge=0, description=ETA_MS)


class CompletedGeneration(_GenerationBase):
    status: Literal["completed"]
    output_url: Url | None = Field(description="The primary asset.")
    output_urls: list[Url] = Field(description="Every asset, one per result.")
    outputs: list[Output]
    credits_used: int = Field(description="The charge, at most credits_estimate.")
    duration_ms: int
    completed_at: Timestamp


class FailedGeneration(_GenerationBase):
    status: Literal["failed"]
    error: str | None = Field(description="e.g. PROVIDER_ERROR, CONTENT_REJECTED, TIMEOUT.")
    message: str | None
    credits_used: Literal[0] = Field(description="The hold was released.")
    completed_at: Timestamp


class CanceledGeneration(_GenerationBase):
    status: Literal["canceled"]
    credits_used: Literal[0] = Field(description="The hold was released.")
    completed_at: Timestamp


class Generation(
    RootModel[
        Annotated[
            PendingGeneration
            | ProcessingGeneration
            | CompletedGeneration
            | FailedGeneration
            | CanceledGeneration,
            Field(discriminator="status"),
        ]
    ]
):
    """A generation; its fields depend on `status`. A failed generation is still 200."""


class SubmitResponse(RootModel[Submitted | Generation]):
    """201: the queued generation; with `Prefer: wait=N`, the generation in the state it
    reached (any status)."""


class GenerationPage(_Open):
    data: list[Generation]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end."
    )
    has_more: bool


class RateLimit(_Open):
    calls_per_minute: int
    concurrent_jobs: int


class CreditsBand(_Open):
    min: int
    max: int


class ParamDescriptor(_Open):
    type: Literal["string", "integer", "enum", "boolean", "string[]"]
    required: bool | None = None
    max_length: int | None = None
    values: list[str] | None = None
    default: str | int | bool | None = None
    min: int | None = None
    max: int | None = None
    max_items: int | None = None


class Model(_Open):
    slug: str
    name: str
    category: Literal["image", "video", "audio"]
    creator: str
    description: str
    params: dict[str, ParamDescriptor] = Field(description="Compact param descriptors.")
    params_schema: dict[str, Any] = Field(
        description="The same params as a JSON Schema (2020-12), ready for form renderers."
    )
    credits_band: CreditsBand = Field(
        description="Per call at number_results 1, after this account's price overrides."
    )
    example_request: dict[str, Any] = Field(description="A body this model accepts.")
    available: bool = Field(description="At least one provider route can take work now.")
    unavailable_reason: Literal["not_configured", "circuit_open"] | None = Field(
        description="`not_configured`: no route has credentials on this server (only the "
        "operator can change that); `circuit_open`: its providers are failing, retry later."
    )


class Models(_Open):
    tier: str
    credits_balance: int
    rate_limit: RateLimit
    models: list[Model] = Field(description="Only the models in this account's allowlist.")


class Credits(_Open):
    balance: int = Field(description="Available credits (held credits excluded).")
    held: int = Field(description="Held by pending and processing generations.")
    tier: str
    cycle_resets_at: Timestamp
    rate_limit: RateLimit
    spent_this_cycle: int
    granted_this_cycle: int


WebhookEvent = Literal["generation.completed", "generation.failed", "generation.canceled"]


class WebhookCreate(BaseModel):
    """A new endpoint. Targets must be `https://` and resolve only to public addresses."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"url": "https://example.com/hooks/vivix", "description": "prod"}]
        },
    )

    url: Url = Field(max_length=2048)
    events: list[WebhookEvent] | None = Field(
        None, min_length=1, description="Default: every generation event."
    )
    description: str | None = Field(None, max_length=500)
    include_studio: bool | None = Field(
        None, description="Also fire for generations started in the Studio (default false)."
    )


class WebhookUpdate(BaseModel):
    """Any subset of the endpoint's fields; `enabled: true` clears `disabled_reason`."""

    model_config = ConfigDict(extra="forbid")

    url: Url | None = Field(None, max_length=2048)
    events: list[WebhookEvent] | None = Field(None, min_length=1)
    description: str | None = Field(None, max_length=500)
    include_studio: bool | None = None
    enabled: bool | None = None


class RotateSecret(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expire_previous_now: bool | None = Field(
        None, description="Stop signing with the previous secret at once (default: 24 h)."
    )


class Webhook(_Open):
    id: str = Field(json_schema_extra={"format": "uuid"})
    url: Url
    description: str
    events: list[WebhookEvent]
    include_studio: bool
    enabled: bool
    disabled_reason: str | None = Field(description="Why it was disabled (410, 5 days failing).")
    secret_prefix: str = Field(description="The first characters of the current secret.")
    created_at: Timestamp


class WebhookList(_Open):
    data: list[Webhook]


class WebhookWithSecret(Webhook):
    secret: str = Field(description="`whsec_…`: shown this once; store it now.")


class WebhookRotated(WebhookWithSecret):
    previous_secret_expires_at: Timestamp | None = Field(
        description="Until then the previous secret also signs (a second webhook-signature "
        "entry); null with expire_previous_now."
    )


class WebhookDelivery(_Open):
    id: str = Field(
        json_schema_extra={"format": "uuid"},
        description="Equals X-Vivix-Delivery-Id and webhook-id, the same on every retry.",
    )
    event: Literal[
        "generation.completed", "generation.failed", "generation.canceled", "webhook.test"
    ]
    generation_id: str | None
    status: Literal["pending", "succeeded", "failed"]
    attempts: int
    next_attempt_at: Timestamp | None
    last_status_code: int | None
    last_error: str | None
    last_latency_ms: int | None
    created_at: Timestamp
    delivered_at: Timestamp | None


class WebhookAttempt(_Open):
    at: Timestamp
    status_code: int | None
    latency_ms: int | None
    error: str | None
    response_body: str | None = Field(description="The first 2 KiB of the response.")


class WebhookDeliveryDetail(WebhookDelivery):
    attempt_log: list[WebhookAttempt] = Field(description="Every attempt, oldest first.")
    request_body: str = Field(description="The exact JSON body sent on every attempt.")


class WebhookDeliveryPage(_Open):
    data: list[WebhookDelivery]
    next_cursor: str | None
    has_more: bool
