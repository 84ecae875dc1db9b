"""Builds the OpenAPI 3.1 document from `operations.OPERATIONS` and `shapes`."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from vivix import __version__
from vivix.kit import errors as error_classes
from vivix.openapi import shapes
from vivix.openapi.operations import (
    EVENT_OPERATIONS,
    FILE_OPERATIONS,
    OPERATIONS,
    WEBHOOK_OPERATIONS,
    Operation,
    Param,
    Success,
)
from vivix.storage.endpoints import RangeNotSatisfiable

DESCRIPTION = """\
One API call per generation (image, video, audio), one credit wallet.

**Auth**: `Authorization: Bearer <key>` on every `/api/v1` call (keys look like
`vvx_live_…` or `vvx_test_…`; test keys render every model on the local renderer, free).

**Errors** are JSON with `error` (a stable code to branch on), `message`, `next` (what to
do) and `request_id`, plus the extra fields listed per code.

**Every response** carries `X-Request-Id`; authenticated ones also `X-RateLimit-Limit`,
`X-RateLimit-Remaining`, `X-RateLimit-Reset` (seconds) and `X-Credits-Balance`.

**Retries**: `POST /api/v1/generate` with an `Idempotency-Key` is safe to retry; 429 and
503 answers with `Retry-After` say when.
"""

_INTEGER_TEXT = {"type": "string", "pattern": "^[0-9]+$"}
RESPONSE_HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-Id": {
        "description": "`req_…`, or the caller's own X-Request-Id when sane; equals the "
        "error body's `request_id`.",
        "schema": {"type": "string"},
    },
    "X-RateLimit-Limit": {"description": "Calls allowed per minute.", "schema": _INTEGER_TEXT},
    "X-RateLimit-Remaining": {
        "description": "Calls left in the current one-minute window.",
        "schema": _INTEGER_TEXT,
    },
    "X-RateLimit-Reset": {
        "description": "Seconds until the window resets.",
        "schema": _INTEGER_TEXT,
    },
    "X-Credits-Balance": {
        "description": "Available credits after this call.",
        "schema": _INTEGER_TEXT,
    },
    "Retry-After": {"description": "Seconds to wait before retrying.", "schema": _INTEGER_TEXT},
    "Location": {"description": "The created object's URL.", "schema": {"type": "string"}},
    "Idempotent-Replayed": {
        "description": "`true`: the original generation of this Idempotency-Key.",
        "schema": {"type": "string", "enum": ["true"]},
    },
    "Preference-Applied": {
        "description": "`wait=N` when the response was held for `Prefer: wait=N`.",
        "schema": {"type": "string"},
    },
    "ETag": {"description": "Strong validator of the file.", "schema": {"type": "string"}},
    "Cache-Control": {"description": "Files never change.", "schema": {"type": "string"}},
    "Accept-Ranges": {"description": "`bytes`.", "schema": {"type": "string"}},
    "Content-Range": {"description": "The range sent.", "schema": {"type": "string"}},
}
_ACCOUNT_HEADERS = (
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "X-Credits-Balance",
)
# Errors answered before the caller is known carry no account headers.
_UNAUTHENTICATED = frozenset({"UNAUTHORIZED", "KEY_INVALID", "KEY_REVOKED"})

SCHEMA_MODELS: tuple[type[BaseModel], ...] = (
    shapes.Error,
    shapes.GenerateRequest,
    shapes.SubmitResponse,
    shapes.Generation,
    shapes.GenerationPage,
    shapes.Models,
    shapes.Model,
    shapes.Credits,
    shapes.WebhookCreate,
    shapes.WebhookUpdate,
    shapes.RotateSecret,
    shapes.Webhook,
    shapes.WebhookList,
    shapes.WebhookWithSecret,
    shapes.WebhookRotated,
    shapes.WebhookDelivery,
    shapes.WebhookDeliveryDetail,
    shapes.WebhookDeliveryPage,
)


def error_classes_by_code() -> dict[str, type[error_classes.VivixError]]:
    """The first (most general) error class of each code: its status and default texts."""
    found: dict[str, type[error_classes.VivixError]] = {}
    queue: list[type[error_classes.VivixError]] = [error_classes.VivixError]
    while queue:
        cls = queue.pop(0)
        found.setdefault(cls.code, cls)
        queue.extend(cls.__subclasses__())
    found[RangeNotSatisfiable.code] = RangeNotSatisfiable
    return found


def _error_statuses() -> dict[str, int]:
    return {code: cls.status for code, cls in error_classes_by_code().items()}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _parameter(param: Param) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": param.name,
        "in": param.where,
        "required": param.required,
        "description": param.description,
        "schema": param.schema,
    }
    if param.style is not None:
        out["style"] = param.style
    if param.explode is not None:
        out["explode"] = param.explode
    return out


def _headers(names: tuple[str, ...], *, account: bool) -> dict[str, Any]:
    chosen = ["X-Request-Id", *(_ACCOUNT_HEADERS if account else ()), *names]
    out: dict[str, Any] = {}
    for name in chosen:
        header: dict[str, Any] = {"$ref": f"#/components/headers/{name}"}
        if name == "X-Request-Id":
            header = {**RESPONSE_HEADERS[name], "required": True}
        out[name] = header
    return out


def _success(success: Success, operation: Operation) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": success.description,
        "headers": _headers(success.headers, account=operation.authenticated),
    }
    if success.binary:
        out["content"] = {"*/*": {"schema": {"type": "string", "format": "binary"}}}
    elif success.stream:
        out["content"] = {"text/event-stream": {"schema": _event_schema(success.body)}}
    elif success.body is not None:
        out["content"] = {"application/json": {"schema": _ref(success.body)}}
    return out


def _event_schema(data: type[BaseModel] | None) -> dict[str, Any]:
    """One server-sent event (OpenAPI 3.1 has `schema` of an event stream describe each
    event); its `data` is JSON of the given shape."""
    payload: dict[str, Any] = {"type": "string"}
    if data is not None:
        payload |= {"contentMediaType": "application/json", "contentSchema": _ref(data)}
    return {
        "type": "object",
        "required": ["data"],
        "properties": {
            "id": {"type": "string", "description": "Usable as `Last-Event-ID`."},
            "event": {"type": "string", "enum": ["generation", "progress"]},
            "data": payload,
        },
    }


def _errors(operation: Operation, statuses: dict[str, int]) -> dict[str, Any]:
    by_status: dict[int, list[str]] = {}
    for code in (*operation.errors, "INTERNAL_ERROR"):
        by_status.setdefault(statuses[code], []).append(code)
    out: dict[str, Any] = {}
    for status, codes in sorted(by_status.items()):
        extra_headers: tuple[str, ...] = ()
        if status in (429, 503):
            extra_headers = ("Retry-After",)
        if "RANGE_NOT_SATISFIABLE" in codes:
            extra_headers = ("Content-Range",)
        account = operation.authenticated and not set(codes) <= _UNAUTHENTICATED
        out[str(status)] = {
            "description": " or ".join(f"`{c}`" for c in codes),
            "headers": _headers(extra_headers, account=account),
            "content": {
                "application/json": {
                    "schema": {
                        "allOf": [_ref(shapes.Error)],
                        "properties": {"error": {"enum": codes}},
                    }
                }
            },
        }
    return out


def _operation(operation: Operation, statuses: dict[str, int]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "operationId": operation.operation_id,
        "tags": [operation.tag],
        "summary": operation.summary,
        "description": operation.description,
        "parameters": [_parameter(p) for p in operation.params],
        "responses": {
            **{str(s.status): _success(s, operation) for s in operation.responses},
            **_errors(operation, statuses),
        },
        "security": [{"bearerAuth": []}] if operation.authenticated else [],
    }
    if operation.body is not None:
        out["requestBody"] = {
            "required": operation.body_required,
            "content": {"application/json": {"schema": _ref(operation.body)}},
        }
    return out


@cache
def openapi_document() -> dict[str, Any]:
    """The document (built once per process; treat it as read-only)."""
    _, definitions = models_json_schema(
        [(model, "serialization") for model in SCHEMA_MODELS],
        ref_template="#/components/schemas/{model}",
    )
    statuses = _error_statuses()
    paths: dict[str, dict[str, Any]] = {}
    for operation in (*OPERATIONS, *EVENT_OPERATIONS, *WEBHOOK_OPERATIONS, *FILE_OPERATIONS):
        paths.setdefault(operation.path, {})[operation.method] = _operation(operation, statuses)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Vivix API", "version": __version__, "description": DESCRIPTION},
        "paths": paths,
        "components": {
            "schemas": definitions["$defs"],
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key: `vvx_live_…` or `vvx_test_…`.",
                }
            },
            "headers": {name: header for name, header in RESPONSE_HEADERS.items()},
        },
        "tags": [
            {"name": "generations", "description": "Submit, read, list and cancel."},
            {"name": "models", "description": "What this key can call, and at what price."},
            {"name": "credits", "description": "The wallet."},
            {"name": "events", "description": "Live changes as server-sent events."},
            {"name": "webhooks", "description": "Signed pushes when generations end."},
            {"name": "files", "description": "Rendered outputs (public capability URLs)."},
        ],
    }
