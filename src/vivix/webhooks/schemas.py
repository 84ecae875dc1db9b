"""Webhook endpoints and deliveries as the API shows them (API.md §5.1)."""

from __future__ import annotations

from typing import Any

from vivix.kit.clock import iso
from vivix.models import DeliveryStatus, WebhookAttempt, WebhookDelivery, WebhookEndpoint


def endpoint_out(endpoint: WebhookEndpoint) -> dict[str, Any]:
    return {
        "id": endpoint.id,
        "url": endpoint.url,
        "description": endpoint.description,
        "events": list(endpoint.events),
        "include_studio": endpoint.include_studio,
        "enabled": endpoint.enabled,
        "disabled_reason": endpoint.disabled_reason,
        "secret_prefix": endpoint.secret_prefix,
        "created_at": iso(endpoint.created_at),
    }


def delivery_out(delivery: WebhookDelivery) -> dict[str, Any]:
    pending = delivery.status == DeliveryStatus.PENDING
    return {
        "id": delivery.id,
        "event": delivery.event,
        "generation_id": delivery.generation_id,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "next_attempt_at": iso(delivery.next_attempt_at) if pending else None,
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
        "last_latency_ms": delivery.last_latency_ms,
        "created_at": iso(delivery.created_at),
        "delivered_at": iso(delivery.delivered_at),
    }


def attempt_out(attempt: WebhookAttempt) -> dict[str, Any]:
    return {
        "at": iso(attempt.at),
        "status_code": attempt.status_code,
        "latency_ms": attempt.latency_ms,
        "error": attempt.error,
        "response_body": attempt.response_body,
    }


def delivery_detail_out(
    delivery: WebhookDelivery, attempts: list[WebhookAttempt]
) -> dict[str, Any]:
    return {
        **delivery_out(delivery),
        "attempt_log": [attempt_out(a) for a in attempts],
        "request_body": delivery.body,
    }
