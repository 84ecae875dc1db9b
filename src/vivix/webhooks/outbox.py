"""Queueing deliveries: the outbox rows, written in the caller's transaction.

`queue_generation_event` runs inside `generations.finish.commit_final_state`, so a final
state that commits always has its deliveries and one that rolls back never does; the
NOTIFY sent with them reaches other processes' workers only on commit. Sending is the
workers' job (`webhooks.sender`), never the request's."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from vivix.kit.clock import utcnow
from vivix.kit.ids import uuid7
from vivix.kit.wakeup import notify_webhooks_queued
from vivix.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint
from vivix.webhooks import repository

GENERATION_EVENTS = ("generation.completed", "generation.failed", "generation.canceled")
TEST_EVENT = "webhook.test"


def encode_body(body: dict[str, Any]) -> str:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


async def queue_generation_event(
    session: AsyncSession,
    *,
    account_id: str,
    generation_id: str,
    source: str,
    event: str,
    body: Callable[[], dict[str, Any]],
) -> int:
    """One delivery per enabled endpoint of the account subscribed to `event` (a Studio
    generation only to endpoints with `include_studio`). `body` is built only when some
    endpoint wants it. Returns how many were queued."""
    endpoints = [
        endpoint
        for endpoint in await repository.enabled_endpoints(session, account_id)
        if event in endpoint.events and (source != "studio" or endpoint.include_studio)
    ]
    if not endpoints:
        return 0
    text = encode_body(body())
    for endpoint in endpoints:
        queue_delivery(session, endpoint, event, text, generation_id=generation_id)
    await notify_webhooks_queued(session)
    return len(endpoints)


def queue_delivery(
    session: AsyncSession,
    endpoint: WebhookEndpoint,
    event: str,
    body: str,
    *,
    generation_id: str | None = None,
) -> WebhookDelivery:
    now = utcnow()
    delivery = WebhookDelivery(
        id=uuid7(),
        endpoint_id=endpoint.id,
        account_id=endpoint.account_id,
        event=event,
        generation_id=generation_id,
        status=DeliveryStatus.PENDING.value,
        body=body,
        attempts=0,
        next_attempt_at=now,
        created_at=now,
    )
    repository.add_delivery(session, delivery)
    return delivery
