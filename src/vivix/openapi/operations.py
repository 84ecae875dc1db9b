"""Every /api/v1 operation as the contract declares it: parameters, bodies, responses and
the documented errors each one can answer (API.md §2-3). `document.py` turns this table
into the OpenAPI document, the `docs/` reference is written from that document, and a test
checks that the app serves exactly these operations."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from vivix.openapi import shapes

# Codes every authenticated /api/v1 call can answer, whatever it does.
GATE_ERRORS = ("UNAUTHORIZED", "KEY_INVALID", "KEY_REVOKED", "TIER_LOCKED", "RATE_LIMIT")


@dataclass(frozen=True)
class Param:
    name: str
    where: str  # "query" | "path" | "header"
    schema: dict[str, Any]
    description: str
    required: bool = False
    style: str | None = None
    explode: bool | None = None


@dataclass(frozen=True)
class Success:
    status: int
    body: type[BaseModel] | None
    description: str
    headers: tuple[str, ...] = ()  # names from document.RESPONSE_HEADERS
    binary: bool = False  # a file's bytes, any content type
    stream: bool = False  # server-sent events (text/event-stream)


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    operation_id: str
    tag: str
    summary: str
    description: str
    responses: tuple[Success, ...]
    errors: tuple[str, ...]
    params: tuple[Param, ...] = ()
    body: type[BaseModel] | None = None
    body_required: bool = True
    authenticated: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


GENERATION_ID = Param(
    "generation_id",
    "path",
    {"type": "string"},
    "The generation's id (a UUID; anything else is 404 GENERATION_NOT_FOUND).",
    required=True,
)
IDEMPOTENCY_KEY = Param(
    "Idempotency-Key",
    "header",
    {"type": "string", "minLength": 1, "maxLength": 255},
    "Makes the submit safe to retry: a repeat with the same key and body within 24 h returns "
    "the original generation (200, `Idempotent-Replayed: true`) without a new hold; the same "
    "key with a different body is 409 IDEMPOTENCY_CONFLICT.",
)
PREFER = Param(
    "Prefer",
    "header",
    {"type": "string", "examples": ["wait=30"]},
    "`wait=N` (N ≤ 60): hold the response up to N seconds and return the generation in "
    "whatever state it reached (then with `Preference-Applied`).",
)

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "post",
        "/api/v1/generate",
        "submitGeneration",
        "generations",
        "Submit a generation",
        "Validates the params against the model's schema, holds `credits_estimate` and queues "
        "the job. Checks, in order: auth → rate limit → tier → JSON and params (model "
        "existence first) → allowlist → provider availability → concurrency → credits. A "
        "rejected call changes nothing: no hold, no generation, no ledger entry.",
        responses=(
            Success(
                201,
                shapes.SubmitResponse,
                "Queued (or, with `Prefer: wait`, the generation in the state it reached).",
                ("Location", "Preference-Applied"),
            ),
            Success(
                200,
                shapes.Generation,
                "A repeated Idempotency-Key with the same body: the original generation.",
                ("Location", "Idempotent-Replayed"),
            ),
        ),
        errors=(
            *GATE_ERRORS,
            "INVALID_JSON",
            "PAYLOAD_TOO_LARGE",
            "UNSUPPORTED_MEDIA_TYPE",
            "INVALID_PARAMS",
            "MODEL_NOT_FOUND",
            "MODEL_NOT_ALLOWED",
            "IDEMPOTENCY_CONFLICT",
            "PROVIDER_DOWN",
            "CONCURRENCY_LIMIT",
            "INSUFFICIENT_CREDITS",
        ),
        params=(IDEMPOTENCY_KEY, PREFER),
        body=shapes.GenerateRequest,
    ),
    Operation(
        "get",
        "/api/v1/generations/{generation_id}",
        "getGeneration",
        "generations",
        "Read a generation",
        "Always 200 for the owner, whatever the status (a failed generation too). Another "
        "account's id is 404, exactly like an unknown one.",
        responses=(Success(200, shapes.Generation, "The generation."),),
        errors=(*GATE_ERRORS, "GENERATION_NOT_FOUND"),
        params=(GENERATION_ID,),
    ),
    Operation(
        "post",
        "/api/v1/generations/{generation_id}/cancel",
        "cancelGeneration",
        "generations",
        "Cancel a generation",
        "Pending → canceled at once; processing → the upstream job is stopped, then canceled. "
        "Either way the whole hold is released. A finished generation is 409 NOT_CANCELABLE.",
        responses=(Success(200, shapes.Generation, "The canceled generation."),),
        errors=(*GATE_ERRORS, "GENERATION_NOT_FOUND", "NOT_CANCELABLE"),
        params=(GENERATION_ID,),
    ),
    Operation(
        "get",
        "/api/v1/generations",
        "listGenerations",
        "generations",
        "List generations",
        "The account's generations, newest first, a page at a time: pass `next_cursor` as "
        "`cursor` until `has_more` is false.",
        responses=(Success(200, shapes.GenerationPage, "One page."),),
        errors=(*GATE_ERRORS, "INVALID_PARAMS"),
        params=(
            Param("cursor", "query", {"type": "string"}, "`next_cursor` of the previous page."),
            Param(
                "limit",
                "query",
                {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                "Page size.",
            ),
            Param(
                "status",
                "query",
                {
                    "type": "string",
                    "enum": ["pending", "processing", "completed", "failed", "canceled"],
                },
                "Only generations in this status.",
            ),
            Param("model", "query", {"type": "string"}, "Only generations of this model."),
            *(
                Param(
                    f"created_{side}",
                    "query",
                    {"type": "string", "format": "date-time"},
                    f"Only generations created {side} this instant (ISO 8601).",
                )
                for side in ("after", "before")
            ),
            Param(
                "metadata",
                "query",
                {"type": "object", "additionalProperties": {"type": "string"}},
                "`metadata[key]=value`: only generations whose metadata has these values.",
                style="deepObject",
                explode=True,
            ),
        ),
    ),
    Operation(
        "get",
        "/api/v1/models",
        "listModels",
        "models",
        "Models this key can call",
        "The account's tier, wallet and limits, and every model in its allowlist with its "
        "params, JSON Schema, credit band, an example request and whether it can run now.",
        responses=(Success(200, shapes.Models, "The catalog for this key."),),
        errors=GATE_ERRORS,
    ),
    Operation(
        "get",
        "/api/v1/models/{slug}",
        "getModel",
        "models",
        "One model",
        "One model of the allowlist. Unknown and not-allowed slugs are both 404 MODEL_NOT_FOUND.",
        responses=(Success(200, shapes.Model, "The model."),),
        errors=(*GATE_ERRORS, "MODEL_NOT_FOUND"),
        params=(Param("slug", "path", {"type": "string"}, "The model's slug.", required=True),),
    ),
    Operation(
        "get",
        "/api/v1/credits",
        "getCredits",
        "credits",
        "The wallet",
        "Available and held credits, this cycle's spend and grant, and the account's limits.",
        responses=(Success(200, shapes.Credits, "The wallet."),),
        errors=GATE_ERRORS,
    ),
)


FILE_KEY = Param(
    "key",
    "path",
    {"type": "string"},
    "The output's storage key, as it appears in an output URL (may contain `/`).",
    required=True,
)
FILE_HEADERS = ("ETag", "Cache-Control", "Accept-Ranges", "Content-Range")
FILE_RESPONSES = (
    Success(200, None, "The file.", FILE_HEADERS, binary=True),
    Success(206, None, "The requested byte range (`Range: bytes=…`).", FILE_HEADERS, binary=True),
    Success(304, None, "Not modified (`If-None-Match` matched the ETag).", ("ETag",)),
)
FILE_OPERATIONS: tuple[Operation, ...] = tuple(
    Operation(
        method,
        "/files/{key}",
        operation_id,
        "files",
        summary,
        "Output URLs are capability URLs: public, unguessable, fetchable without auth. "
        "Single byte ranges (video seeking) and conditional requests are supported.",
        responses=FILE_RESPONSES,
        errors=("NOT_FOUND", "RANGE_NOT_SATISFIABLE"),
        params=(FILE_KEY,),
        authenticated=False,
    )
    for method, operation_id, summary in (
        ("get", "getFile", "Download a rendered output"),
        ("head", "headFile", "A rendered output's size and type"),
    )
)


WEBHOOK_ID = Param(
    "webhook_id",
    "path",
    {"type": "string"},
    "The endpoint's id (another account's id, or anything else, is 404 WEBHOOK_NOT_FOUND).",
    required=True,
)
DELIVERY_ID = Param(
    "delivery_id",
    "path",
    {"type": "string"},
    "The delivery's id (X-Vivix-Delivery-Id); unknown or foreign ids are 404.",
    required=True,
)
_BODY_ERRORS = ("INVALID_JSON", "PAYLOAD_TOO_LARGE", "UNSUPPORTED_MEDIA_TYPE", "INVALID_PARAMS")
WEBHOOK_OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "get",
        "/api/v1/webhooks",
        "listWebhooks",
        "webhooks",
        "List webhook endpoints",
        "The account's endpoints (at most 5). Secrets are never shown again: only their "
        "first characters (`secret_prefix`).",
        responses=(Success(200, shapes.WebhookList, "The endpoints."),),
        errors=GATE_ERRORS,
    ),
    Operation(
        "post",
        "/api/v1/webhooks",
        "createWebhook",
        "webhooks",
        "Create a webhook endpoint",
        "Generations started through the API fire `generation.completed`, `.failed` and "
        "`.canceled` to every enabled endpoint subscribed to them (Studio generations only "
        "with `include_studio`). The answer carries the signing `secret`, shown this once. "
        "A sixth endpoint is 409 WEBHOOK_LIMIT; a URL that is not https:// or resolves to a "
        "non-public address is 422 INVALID_PARAMS with `field: url`.",
        responses=(
            Success(201, shapes.WebhookWithSecret, "Created; store `secret` now.", ("Location",)),
        ),
        errors=(*GATE_ERRORS, *_BODY_ERRORS, "WEBHOOK_LIMIT"),
        body=shapes.WebhookCreate,
    ),
    Operation(
        "patch",
        "/api/v1/webhooks/{webhook_id}",
        "updateWebhook",
        "webhooks",
        "Change a webhook endpoint",
        "Change `url`, `events`, `description`, `include_studio` or `enabled`.",
        responses=(Success(200, shapes.Webhook, "The endpoint."),),
        errors=(*GATE_ERRORS, *_BODY_ERRORS, "WEBHOOK_NOT_FOUND"),
        params=(WEBHOOK_ID,),
        body=shapes.WebhookUpdate,
    ),
    Operation(
        "delete",
        "/api/v1/webhooks/{webhook_id}",
        "deleteWebhook",
        "webhooks",
        "Delete a webhook endpoint",
        "Deletes the endpoint; deliveries still pending for it are dropped.",
        responses=(Success(204, None, "Deleted."),),
        errors=(*GATE_ERRORS, "WEBHOOK_NOT_FOUND"),
        params=(WEBHOOK_ID,),
    ),
    Operation(
        "post",
        "/api/v1/webhooks/{webhook_id}/rotate-secret",
        "rotateWebhookSecret",
        "webhooks",
        "Rotate a webhook endpoint's secret",
        "A new `secret` (shown once). The previous one keeps signing, as a second "
        "`webhook-signature` entry, until `previous_secret_expires_at` (24 h), or not at "
        'all with `{"expire_previous_now": true}`. The body is optional.',
        responses=(Success(200, shapes.WebhookRotated, "The endpoint with its new secret."),),
        errors=(*GATE_ERRORS, *_BODY_ERRORS, "WEBHOOK_NOT_FOUND"),
        params=(WEBHOOK_ID,),
        body=shapes.RotateSecret,
        body_required=False,
    ),
    Operation(
        "post",
        "/api/v1/webhooks/{webhook_id}/test",
        "testWebhook",
        "webhooks",
        "Send a test delivery",
        "Queues a `webhook.test` delivery to the endpoint and returns it; follow it with "
        "GET …/deliveries/{delivery_id}.",
        responses=(Success(201, shapes.WebhookDelivery, "The queued delivery."),),
        errors=(*GATE_ERRORS, "WEBHOOK_NOT_FOUND"),
        params=(WEBHOOK_ID,),
    ),
    Operation(
        "get",
        "/api/v1/webhooks/{webhook_id}/deliveries",
        "listWebhookDeliveries",
        "webhooks",
        "List an endpoint's deliveries",
        "Newest first, a page at a time; filters `status` and `generation_id`.",
        responses=(Success(200, shapes.WebhookDeliveryPage, "One page."),),
        errors=(*GATE_ERRORS, "INVALID_PARAMS", "WEBHOOK_NOT_FOUND"),
        params=(
            WEBHOOK_ID,
            Param("cursor", "query", {"type": "string"}, "`next_cursor` of the previous page."),
            Param(
                "limit",
                "query",
                {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                "Page size.",
            ),
            Param(
                "status",
                "query",
                {"type": "string", "enum": ["pending", "succeeded", "failed"]},
                "Only deliveries in this status.",
            ),
            Param(
                "generation_id",
                "query",
                {"type": "string", "format": "uuid"},
                "Only deliveries of this generation.",
            ),
        ),
    ),
    Operation(
        "get",
        "/api/v1/webhooks/{webhook_id}/deliveries/{delivery_id}",
        "getWebhookDelivery",
        "webhooks",
        "One delivery, with every attempt",
        "The delivery, every attempt (`at`, `status_code`, `latency_ms`, `error`, the first "
        "2 KiB of the response) and the exact request body sent.",
        responses=(Success(200, shapes.WebhookDeliveryDetail, "The delivery."),),
        errors=(*GATE_ERRORS, "WEBHOOK_NOT_FOUND"),
        params=(WEBHOOK_ID, DELIVERY_ID),
    ),
    Operation(
        "post",
        "/api/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver",
        "redeliverWebhook",
        "webhooks",
        "Send a delivery again now",
        "A new attempt now, with the same delivery id and body, whatever the delivery's status.",
        responses=(Success(200, shapes.WebhookDelivery, "The delivery, pending again."),),
        errors=(*GATE_ERRORS, "WEBHOOK_NOT_FOUND"),
        params=(WEBHOOK_ID, DELIVERY_ID),
    ),
)


LAST_EVENT_ID = Param(
    "Last-Event-ID",
    "header",
    {"type": "string", "pattern": "^[0-9]+$"},
    "Resume after this event id (what a browser's EventSource sends by itself when it "
    "reconnects): every later change is sent, and a final state already seen is not sent "
    "again.",
)
_STREAM_FORMAT = (
    " Each event is `id: <n>` (grows; usable as `Last-Event-ID`), `event: generation` (a "
    "status or queue position change) or `event: progress` (same status, new progress), and "
    "`data:` the generation exactly as `GET /api/v1/generations/{generation_id}` shows it "
    "at that change. A `: ping` comment comes at least every 15 s. Opening a stream counts "
    "one call against the rate limit. Without an Authorization header the Studio's session "
    "cookie is accepted."
)

EVENT_OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "get",
        "/api/v1/generations/{generation_id}/events",
        "streamGenerationEvents",
        "events",
        "Stream a generation's changes",
        "Server-sent events: the current state first, then every change (queue position, "
        "processing, progress, the final state); the stream ends after the final state."
        + _STREAM_FORMAT,
        responses=(
            Success(200, shapes.Generation, "The event stream.", stream=True),
            Success(
                204,
                None,
                "`Last-Event-ID` is at or past the final state: nothing more will come (an "
                "EventSource stops reconnecting).",
            ),
        ),
        errors=(*GATE_ERRORS, "GENERATION_NOT_FOUND"),
        params=(GENERATION_ID, LAST_EVENT_ID),
    ),
    Operation(
        "get",
        "/api/v1/events",
        "streamAccountEvents",
        "events",
        "Stream the changes of every generation of the account",
        "Server-sent events: the account's pending and processing generations first, then "
        "every change of any of its generations (queue positions only on a generation's "
        "own stream); it stays open." + _STREAM_FORMAT,
        responses=(Success(200, shapes.Generation, "The event stream.", stream=True),),
        errors=(*GATE_ERRORS, "INVALID_PARAMS"),
        params=(
            Param("model", "query", {"type": "string"}, "Only generations of this model."),
            Param(
                "status",
                "query",
                {
                    "type": "string",
                    "enum": ["pending", "processing", "completed", "failed", "canceled"],
                },
                "Only changes to this status.",
            ),
            LAST_EVENT_ID,
        ),
    ),
)
