"""Queueing deliveries: the outbox rows, written in the caller's transaction.

`queue_generation_event` runs inside `generations.finish.commit_final_state`, so a final
state that commits always has its deliveries and one that rolls back never does. In a
worker process whose sender has room, the rows are written already leased to that sender
(as its claim would), which sends them as soon as the transaction commits: no NOTIFY, no
claim query between the commit and the request. Otherwise they are written claimable and
the NOTIFY sent with them reaches other processes' workers on commit. If the process dies
first, the lease expires and any worker claims them. Sending is the workers' job
(`webhooks.sender`), never the request's."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession

from vivix.kit.clock import utcnow
from vivix.kit.ids import uuid7
from vivix.kit.wakeup import notify_webhooks_queued
from vivix.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint
from vivix.webhooks import repository

if TYPE_CHECKING:
    from vivix.webhooks.sender import WebhookSender

Queued = list[tuple[WebhookDelivery, WebhookEndpoint]]

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
    sender: WebhookSender | None = None,
) -> tuple[Queued, bool]:
    """One delivery per enabled endpoint of the account subscribed to `event` (a Studio
    generation only to endpoints with `include_studio`). `body` is built only when some
    endpoint wants it. Returns the deliveries with their endpoints, and whether they are
    leased to `sender` (this process's; it sends them once the caller commits)."""
    endpoints = [
        endpoint
        for endpoint in await repository.enabled_endpoints(session, account_id)
        if event in endpoint.events and (source != "studio" or endpoint.include_studio)
    ]
    if not endpoints:
        return [], False
    text = encode_body(body())
    lease = None if sender is None else sender.lease_for(len(endpoints))
    queued = [
        (queue_delivery(session, e, event, text, generation_id=generation_id, lease=lease), e)
        for e in endpoints
    ]
    if lease is None:
        await notify_webhooks_queued(session)
    return queued, lease is not None


def queue_delivery(
    session: AsyncSession,
    endpoint: WebhookEndpoint,
    event: str,
    body: str,
    *,
    generation_id: str | None = None,
    lease: tuple[str, datetime] | None = None,
) -> WebhookDelivery:
    """A pending delivery, due now; with `lease` (owner, until) already claimed by it."""
    now = utcnow()
    delivery = WebhookDelivery(
        id=uuid7(),
        endpoint_id=endpoint.id,
        account_id=endpoint.account_id,
        event=event,
        generation_id=generation_id,
        status=DeliveryStatus.PENDING.value,
        body=body,
        attempts=0 if lease is None else 1,
        next_attempt_at=now if lease is None else lease[1],
        lease_owner=None if lease is None else lease[0],
        created_at=now,
    )
    repository.add_delivery(session, delivery)
    return delivery
