"""Managing webhook endpoints and their deliveries (API.md §5.1), for the account's own
API calls and for operators (`admin.service`). Each operation is one transaction.

Secrets leave this module only in the create and rotate results (shown once)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession

from vivix.accounts import repository as accounts_repository
from vivix.kit.clock import iso, utcnow
from vivix.kit.egress import UrlRefused
from vivix.kit.errors import InvalidParams, WebhookLimit, WebhookNotFound
from vivix.kit.ids import is_uuid, uuid7
from vivix.kit.pagination import decode_cursor, encode_cursor
from vivix.kit.wakeup import notify_webhooks_queued
from vivix.models import DeliveryStatus, WebhookEndpoint
from vivix.webhooks import outbox, repository
from vivix.webhooks.schemas import delivery_detail_out, delivery_out, endpoint_out
from vivix.webhooks.secrets import encrypt_secret, new_secret, shown_prefix
from vivix.webhooks.targets import check_target

if TYPE_CHECKING:
    from vivix.runtime import Runtime

MAX_ENDPOINTS = 5
ROTATION_OVERLAP = timedelta(hours=24)
MAX_DESCRIPTION = 500
SUBSCRIBABLE = outbox.GENERATION_EVENTS
_CREATE_FIELDS = frozenset({"url", "events", "description", "include_studio"})
_UPDATE_FIELDS = _CREATE_FIELDS | {"enabled"}
_DELIVERY_STATUSES = tuple(s.value for s in DeliveryStatus)


@dataclass(frozen=True, slots=True)
class EndpointChanges:
    """Validated fields of a create or an update (None: not given)."""

    url: str | None = None
    events: list[str] | None = None
    description: str | None = None
    include_studio: bool | None = None
    enabled: bool | None = None


async def parse_changes(
    runtime: Runtime, body: dict[str, Any], *, creating: bool
) -> EndpointChanges:
    allowed = _CREATE_FIELDS if creating else _UPDATE_FIELDS
    for name in body:
        if name not in allowed:
            raise InvalidParams(name, "is not a field of a webhook endpoint")
    url = body.get("url")
    if creating and url is None:
        raise InvalidParams("url", "is required")
    if url is not None:
        if not isinstance(url, str):
            raise InvalidParams("url", "must be a string")
        try:
            await check_target(runtime, url)
        except UrlRefused as exc:
            raise InvalidParams("url", exc.reason) from None
    events = body.get("events")
    if events is not None or "events" in body:
        if not isinstance(events, list) or not events:
            raise InvalidParams("events", "must be a non-empty list of event names")
        for event in events:
            if event not in SUBSCRIBABLE:
                raise InvalidParams("events", "each must be one of " + ", ".join(SUBSCRIBABLE))
        events = [e for e in SUBSCRIBABLE if e in events]
    description = body.get("description")
    if "description" in body and (
        not isinstance(description, str) or len(description) > MAX_DESCRIPTION
    ):
        raise InvalidParams("description", f"must be a string of at most {MAX_DESCRIPTION} chars")
    if isinstance(description, str) and "\x00" in description:
        raise InvalidParams("description", "must not contain NUL characters")
    for flag in ("include_studio", "enabled"):
        if flag in body and not isinstance(body[flag], bool):
            raise InvalidParams(flag, "must be true or false")
    return EndpointChanges(
        url=url,
        events=events,
        description=description,
        include_studio=body.get("include_studio"),
        enabled=body.get("enabled"),
    )


def parse_expire_previous_now(body: dict[str, Any]) -> bool:
    for name in body:
        if name != "expire_previous_now":
            raise InvalidParams(name, "is not a field of this request")
    value = body.get("expire_previous_now", False)
    if not isinstance(value, bool):
        raise InvalidParams("expire_previous_now", "must be true or false")
    return value


async def list_endpoints(runtime: Runtime, account_id: str) -> list[dict[str, Any]]:
    async with runtime.db.read() as session:
        return [endpoint_out(e) for e in await repository.list_endpoints(session, account_id)]


async def create_endpoint(
    runtime: Runtime, session: AsyncSession, account_id: str, changes: EndpointChanges
) -> tuple[WebhookEndpoint, str]:
    """In the caller's transaction: the new endpoint and its secret (shown once)."""
    await accounts_repository.lock_account(session, account_id)  # the limit holds under races
    if await repository.count_endpoints(session, account_id) >= MAX_ENDPOINTS:
        raise WebhookLimit(
            f"An account can have at most {MAX_ENDPOINTS} webhook endpoints.",
            limit=MAX_ENDPOINTS,
        )
    assert changes.url is not None
    now = utcnow()
    endpoint_id = uuid7()
    secret = new_secret()
    endpoint = WebhookEndpoint(
        id=endpoint_id,
        account_id=account_id,
        url=changes.url,
        description=changes.description or "",
        events=changes.events or list(SUBSCRIBABLE),
        include_studio=bool(changes.include_studio),
        enabled=True,
        disabled_reason=None,
        secret_encrypted=encrypt_secret(runtime.secret, endpoint_id, secret),
        secret_prefix=shown_prefix(secret),
        created_at=now,
        updated_at=now,
    )
    repository.add_endpoint(session, endpoint)
    return endpoint, secret


def apply_changes(endpoint: WebhookEndpoint, changes: EndpointChanges) -> None:
    if changes.url is not None:
        endpoint.url = changes.url
    if changes.events is not None:
        endpoint.events = changes.events
    if changes.description is not None:
        endpoint.description = changes.description
    if changes.include_studio is not None:
        endpoint.include_studio = changes.include_studio
    if changes.enabled is not None and changes.enabled != endpoint.enabled:
        set_enabled(endpoint, changes.enabled, None)
    endpoint.updated_at = utcnow()


def set_enabled(endpoint: WebhookEndpoint, enabled: bool, reason: str | None) -> None:
    endpoint.enabled = enabled
    endpoint.disabled_reason = None if enabled else reason
    if enabled:
        endpoint.failing_since = None  # a fresh start: the 5-day clock restarts
    endpoint.updated_at = utcnow()


def rotate(runtime: Runtime, endpoint: WebhookEndpoint, expire_previous_now: bool) -> str:
    """Give `endpoint` a new secret; the current one keeps signing for 24 h (or not)."""
    secret = new_secret()
    now = utcnow()
    if expire_previous_now:
        endpoint.previous_secret_encrypted = None
        endpoint.previous_secret_expires_at = None
    else:
        endpoint.previous_secret_encrypted = endpoint.secret_encrypted
        endpoint.previous_secret_expires_at = now + ROTATION_OVERLAP
    endpoint.secret_encrypted = encrypt_secret(runtime.secret, endpoint.id, secret)
    endpoint.secret_prefix = shown_prefix(secret)
    endpoint.updated_at = now
    return secret


def rotated_out(endpoint: WebhookEndpoint, secret: str) -> dict[str, Any]:
    return {
        **endpoint_out(endpoint),
        "secret": secret,
        "previous_secret_expires_at": iso(endpoint.previous_secret_expires_at),
    }


async def owned_endpoint(
    session: AsyncSession, account_id: str | None, endpoint_id: str, *, lock: bool = False
) -> WebhookEndpoint:
    found = None
    if is_uuid(endpoint_id):
        found = await repository.find_endpoint(session, account_id, endpoint_id.lower(), lock=lock)
    if found is None:
        raise WebhookNotFound()
    return found


# --- the account's own API (one transaction each) -----------------------------------------


async def create_for_account(
    runtime: Runtime, account_id: str, body: dict[str, Any]
) -> dict[str, Any]:
    changes = await parse_changes(runtime, body, creating=True)
    async with runtime.db.transaction() as session:
        endpoint, secret = await create_endpoint(runtime, session, account_id, changes)
    return {**endpoint_out(endpoint), "secret": secret}


async def update_for_account(
    runtime: Runtime, account_id: str, endpoint_id: str, body: dict[str, Any]
) -> dict[str, Any]:
    async with runtime.db.read() as session:
        await owned_endpoint(session, account_id, endpoint_id)  # 404 before 422
    changes = await parse_changes(runtime, body, creating=False)
    async with runtime.db.transaction() as session:
        endpoint = await owned_endpoint(session, account_id, endpoint_id, lock=True)
        apply_changes(endpoint, changes)
    return endpoint_out(endpoint)


async def delete_for_account(runtime: Runtime, account_id: str, endpoint_id: str) -> None:
    async with runtime.db.transaction() as session:
        endpoint = await owned_endpoint(session, account_id, endpoint_id, lock=True)
        await repository.delete_endpoint(session, endpoint.id)


async def rotate_for_account(
    runtime: Runtime, account_id: str, endpoint_id: str, expire_previous_now: bool
) -> dict[str, Any]:
    async with runtime.db.transaction() as session:
        endpoint = await owned_endpoint(session, account_id, endpoint_id, lock=True)
        secret = rotate(runtime, endpoint, expire_previous_now)
    return rotated_out(endpoint, secret)


async def queue_test(runtime: Runtime, account_id: str | None, endpoint_id: str) -> dict[str, Any]:
    """A `webhook.test` delivery to the endpoint (enabled or not: it is sent once the
    endpoint is enabled)."""
    async with runtime.db.transaction() as session:
        endpoint = await owned_endpoint(session, account_id, endpoint_id)
        now = utcnow()
        body = {
            "event": outbox.TEST_EVENT,
            "webhook_id": endpoint.id,
            "created_at": iso(now),
            "message": "A test delivery from Vivix: your endpoint is reachable.",
        }
        delivery = outbox.queue_delivery(
            session, endpoint, outbox.TEST_EVENT, outbox.encode_body(body)
        )
        await notify_webhooks_queued(session)
    runtime.notify_webhooks_queued()
    return delivery_out(delivery)


async def list_deliveries(
    runtime: Runtime,
    account_id: str,
    endpoint_id: str,
    *,
    limit: int,
    cursor: str | None,
    status: str | None,
    generation_id: str | None,
) -> dict[str, Any]:
    if status is not None and status not in _DELIVERY_STATUSES:
        raise InvalidParams("status", "must be one of " + ", ".join(_DELIVERY_STATUSES))
    if generation_id is not None and not is_uuid(generation_id):
        raise InvalidParams("generation_id", "must be a generation id (a UUID)")
    before = decode_cursor(cursor) if cursor else None
    async with runtime.db.read() as session:
        endpoint = await owned_endpoint(session, account_id, endpoint_id)
        rows = await repository.list_deliveries(
            session,
            endpoint.id,
            limit=limit + 1,
            before_id=before,
            status=status,
            generation_id=generation_id.lower() if generation_id else None,
        )
    has_more = len(rows) > limit
    page = rows[:limit]
    return {
        "data": [delivery_out(d) for d in page],
        "next_cursor": encode_cursor(page[-1].id) if has_more else None,
        "has_more": has_more,
    }


async def show_delivery(
    runtime: Runtime, account_id: str, endpoint_id: str, delivery_id: str
) -> dict[str, Any]:
    async with runtime.db.read() as session:
        endpoint = await owned_endpoint(session, account_id, endpoint_id)
        delivery = None
        if is_uuid(delivery_id):
            delivery = await repository.find_delivery(session, endpoint.id, delivery_id.lower())
        if delivery is None:
            raise WebhookNotFound()
        attempts = await repository.list_attempts(session, delivery.id)
    return delivery_detail_out(delivery, attempts)


async def redeliver(
    runtime: Runtime, account_id: str, endpoint_id: str, delivery_id: str
) -> dict[str, Any]:
    """A new attempt now, same delivery id and body, whatever the delivery's status. An
    attempt in flight right now (leased, not yet expired) is left to finish."""
    async with runtime.db.transaction() as session:
        endpoint = await owned_endpoint(session, account_id, endpoint_id)
        delivery = None
        if is_uuid(delivery_id):
            delivery = await repository.find_delivery(
                session, endpoint.id, delivery_id.lower(), lock=True
            )
        if delivery is None:
            raise WebhookNotFound()
        now = utcnow()
        in_flight = (
            delivery.status == DeliveryStatus.PENDING.value
            and delivery.lease_owner is not None
            and delivery.next_attempt_at is not None
            and delivery.next_attempt_at > now
        )
        if not in_flight:
            delivery.status = DeliveryStatus.PENDING.value
            delivery.next_attempt_at = now
            delivery.lease_owner = None
            delivery.delivered_at = None
            await notify_webhooks_queued(session)
    runtime.notify_webhooks_queued()
    return delivery_out(delivery)
