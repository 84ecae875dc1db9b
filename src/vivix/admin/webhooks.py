"""Operators' webhook operations (CLI `vivix webhooks …` and /admin/v1), on any account,
each recorded in the operator audit log in the same transaction (secrets never are)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vivix.accounts import service as accounts
from vivix.admin.service import SYSTEM, Actor, record_admin_action
from vivix.webhooks import repository
from vivix.webhooks import service as webhooks
from vivix.webhooks.schemas import endpoint_out

if TYPE_CHECKING:
    from vivix.runtime import Runtime


async def list_webhooks(runtime: Runtime, account_name: str) -> list[dict[str, Any]]:
    async with runtime.db.read() as session:
        account = await accounts.get_account(session, account_name)
        return [endpoint_out(e) for e in await repository.list_endpoints(session, account.id)]


async def add_webhook(
    runtime: Runtime,
    account_name: str,
    url: str,
    *,
    events: list[str] | None = None,
    description: str | None = None,
    include_studio: bool | None = None,
    actor: Actor = SYSTEM,
) -> dict[str, Any]:
    """A new endpoint with its secret (shown once), under the same checks as the API's."""
    body: dict[str, Any] = {"url": url}
    for name, value in (
        ("events", events),
        ("description", description),
        ("include_studio", include_studio),
    ):
        if value is not None:
            body[name] = value
    changes = await webhooks.parse_changes(runtime, body, creating=True)
    async with runtime.db.transaction() as session:
        account = await accounts.get_account(session, account_name)
        endpoint, secret = await webhooks.create_endpoint(runtime, session, account.id, changes)
        shown = endpoint_out(endpoint)
        record_admin_action(
            session,
            actor,
            "webhook.create",
            target_type="webhook",
            target_id=endpoint.id,
            account_id=account.id,
            after={k: v for k, v in shown.items() if k not in ("id", "created_at")},
        )
    return {**shown, "secret": secret}


async def rotate_webhook(
    runtime: Runtime,
    account_name: str,
    webhook_id: str,
    *,
    expire_previous_now: bool = False,
    actor: Actor = SYSTEM,
) -> dict[str, Any]:
    async with runtime.db.transaction() as session:
        account = await accounts.get_account(session, account_name)
        endpoint = await webhooks.owned_endpoint(session, account.id, webhook_id, lock=True)
        before = endpoint.secret_prefix
        secret = webhooks.rotate(runtime, endpoint, expire_previous_now)
        out = webhooks.rotated_out(endpoint, secret)
        record_admin_action(
            session,
            actor,
            "webhook.rotate",
            target_type="webhook",
            target_id=endpoint.id,
            account_id=account.id,
            before={"secret_prefix": before},
            after={
                "secret_prefix": endpoint.secret_prefix,
                "previous_secret_expires_at": out["previous_secret_expires_at"],
            },
        )
    return out


async def disable_webhook(
    runtime: Runtime,
    account_name: str,
    webhook_id: str,
    *,
    reason: str | None = None,
    actor: Actor = SYSTEM,
) -> dict[str, Any]:
    async with runtime.db.transaction() as session:
        account = await accounts.get_account(session, account_name)
        endpoint = await webhooks.owned_endpoint(session, account.id, webhook_id, lock=True)
        before = {"enabled": endpoint.enabled, "disabled_reason": endpoint.disabled_reason}
        webhooks.set_enabled(endpoint, False, (reason or "disabled by the operator")[:300])
        record_admin_action(
            session,
            actor,
            "webhook.disable",
            target_type="webhook",
            target_id=endpoint.id,
            account_id=account.id,
            before=before,
            after={"enabled": False, "disabled_reason": endpoint.disabled_reason},
        )
    return endpoint_out(endpoint)
