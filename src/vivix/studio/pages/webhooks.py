"""Settings → API & Webhooks: the account's webhook endpoints (add, rotate, enable or
disable, test, delete), each endpoint's delivery log and redelivery.

Every action calls `vivix.webhooks.service`, the code behind /api/v1/webhooks: the same
limits, egress guard, secrets and outbox. Another account's ids are 404 like unknown ones."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from vivix.kit.errors import InvalidParams, WebhookLimit, WebhookNotFound
from vivix.kit.http import runtime_of
from vivix.studio.pages.settings import api_settings_page, dated, flash_of
from vivix.studio.web import PageNotFound, StudioRoute, read_form, redirect, require_viewer, web_of
from vivix.users.service import Viewer
from vivix.webhooks import service

router = APIRouter(route_class=StudioRoute)
BASE = "/settings/api/webhooks"
PAGE_SIZE = 20
STATUSES = ("pending", "succeeded", "failed")
FLASHES = {
    "test": ("ok", "Test event queued: it appears below as it is sent."),
    "test-disabled": ("ok", "Test event queued: it is sent once you enable the endpoint."),
    "enabled": ("ok", "Endpoint enabled: new events are delivered again."),
    "disabled": ("ok", "Endpoint disabled: events are kept queued until you enable it."),
    "redelivered": ("ok", "Sending again now, with the same delivery id and body."),
}


def _not_found() -> PageNotFound:
    return PageNotFound(
        "No such webhook endpoint or delivery on your account.",
        next="Check the address, or go back to API & Webhooks.",
    )


def _create_body(form: FormData) -> dict[str, Any]:
    """The form as the API's JSON body (unchecked boxes are absent from a form)."""
    body: dict[str, Any] = {
        "url": str(form.get("url") or "").strip() or None,  # None: "is required"
        "description": str(form.get("description") or "").strip(),
        "include_studio": form.get("include_studio") == "on",
    }
    events = [str(e) for e in form.getlist("events")]
    if events or form.get("events_shown"):
        body["events"] = events  # none ticked: the service says at least one is needed
    return body


@router.post(BASE)
async def create_endpoint(request: Request) -> Response:
    """The secret is in this response only (stored encrypted, never shown again)."""
    viewer = await require_viewer(request)
    body = _create_body(await read_form(request, viewer))
    state: dict[str, Any] = {"values": body}
    try:
        created = await service.create_for_account(runtime_of(request), viewer.account.id, body)
    except InvalidParams as exc:
        field, reason = str(exc.extra["field"]), str(exc.extra["reason"])
        state["errors"] = {field: _url_sentence(reason) if field == "url" else reason}
        return await api_settings_page(request, viewer, webhook=state, status=422)
    except WebhookLimit as exc:
        state["errors"] = {"form": exc.message + " Delete one you no longer use first."}
        return await api_settings_page(request, viewer, webhook=state, status=exc.status)
    return await api_settings_page(
        request, viewer, webhook={"new_secret": dated(created)}, status=201
    )


async def _endpoint_page(
    request: Request,
    viewer: Viewer,
    endpoint_id: str,
    *,
    new_secret: dict[str, Any] | None = None,
) -> Response:
    runtime = runtime_of(request)
    endpoint = next(
        (
            e
            for e in await service.list_endpoints(runtime, viewer.account.id)
            if e["id"] == endpoint_id.lower()
        ),
        None,
    )
    if endpoint is None:
        raise _not_found()
    query = request.query_params
    status = query.get("status") or None
    if status not in (None, *STATUSES):
        status = None
    cursor = query.get("cursor") or None
    page = await service.list_deliveries(
        runtime,
        viewer.account.id,
        endpoint["id"],
        limit=PAGE_SIZE,
        cursor=cursor,
        status=status,
        generation_id=None,
    )
    deliveries = [dated(d) for d in page["data"]]
    context = {
        "active": "settings-api",
        "endpoint": dated(endpoint),
        "deliveries": deliveries,
        "next_cursor": page["next_cursor"],
        "paged": cursor is not None,
        "status_filter": status,
        "statuses": STATUSES,
        "live": any(d["status"] == "pending" for d in deliveries),
        "new_secret": new_secret,
        "flash": flash_of(request, FLASHES),
    }
    return web_of(request).page(request, "settings_webhook.html", context, viewer=viewer)


@router.get(BASE + "/{endpoint_id}")
async def endpoint_page(request: Request, endpoint_id: str) -> Response:
    return await _endpoint_page(request, await require_viewer(request), endpoint_id)


async def _act(request: Request) -> Viewer:
    """The viewer of a state change, after its CSRF check."""
    viewer = await require_viewer(request)
    await read_form(request, viewer)
    return viewer


@router.post(BASE + "/{endpoint_id}/rotate")
async def rotate_secret(request: Request, endpoint_id: str) -> Response:
    """A new secret, shown once; the current one keeps signing for 24 h."""
    viewer = await _act(request)
    try:
        rotated = await service.rotate_for_account(
            runtime_of(request), viewer.account.id, endpoint_id, expire_previous_now=False
        )
    except WebhookNotFound:
        raise _not_found() from None
    return await _endpoint_page(request, viewer, rotated["id"], new_secret=dated(rotated))


@router.post(BASE + "/{endpoint_id}/enabled")
async def set_enabled(request: Request, endpoint_id: str) -> Response:
    viewer = await require_viewer(request)
    form = await read_form(request, viewer)
    enabled = form.get("enabled") == "true"
    try:
        updated = await service.update_for_account(
            runtime_of(request), viewer.account.id, endpoint_id, {"enabled": enabled}
        )
    except WebhookNotFound:
        raise _not_found() from None
    return redirect(f"{BASE}/{updated['id']}?done={'enabled' if enabled else 'disabled'}")


@router.post(BASE + "/{endpoint_id}/test")
async def send_test(request: Request, endpoint_id: str) -> Response:
    viewer = await _act(request)
    runtime = runtime_of(request)
    try:
        await service.queue_test(runtime, viewer.account.id, endpoint_id)
        endpoints = await service.list_endpoints(runtime, viewer.account.id)
    except WebhookNotFound:
        raise _not_found() from None
    endpoint = next(e for e in endpoints if e["id"] == endpoint_id.lower())
    done = "test" if endpoint["enabled"] else "test-disabled"
    return redirect(f"{BASE}/{endpoint['id']}?done={done}")


@router.post(BASE + "/{endpoint_id}/delete")
async def delete_endpoint(request: Request, endpoint_id: str) -> Response:
    viewer = await _act(request)
    try:
        await service.delete_for_account(runtime_of(request), viewer.account.id, endpoint_id)
    except WebhookNotFound:
        raise _not_found() from None
    return redirect("/settings/api?done=webhook-deleted#webhooks")


@router.get(BASE + "/{endpoint_id}/deliveries/{delivery_id}")
async def delivery_page(request: Request, endpoint_id: str, delivery_id: str) -> Response:
    viewer = await require_viewer(request)
    runtime = runtime_of(request)
    try:
        delivery = await service.show_delivery(runtime, viewer.account.id, endpoint_id, delivery_id)
    except WebhookNotFound:
        raise _not_found() from None
    endpoints = await service.list_endpoints(runtime, viewer.account.id)
    endpoint = next(e for e in endpoints if e["id"] == endpoint_id.lower())
    context = {
        "active": "settings-api",
        "endpoint": dated(endpoint),
        "delivery": dated(delivery),
        "attempts": [dated(a) for a in reversed(delivery["attempt_log"])],
        "request_body": _pretty(delivery["request_body"]),
        "flash": flash_of(request, FLASHES),
    }
    return web_of(request).page(request, "settings_webhook_delivery.html", context, viewer=viewer)


@router.post(BASE + "/{endpoint_id}/deliveries/{delivery_id}/redeliver")
async def redeliver(request: Request, endpoint_id: str, delivery_id: str) -> Response:
    viewer = await _act(request)
    try:
        await service.redeliver(runtime_of(request), viewer.account.id, endpoint_id, delivery_id)
    except WebhookNotFound:
        raise _not_found() from None
    return redirect(
        f"{BASE}/{endpoint_id.lower()}/deliveries/{delivery_id.lower()}?done=redelivered"
    )


def _url_sentence(reason: str) -> str:
    """The egress guard's reason ("must be an https:// URL", "h resolves to a private
    address (…)") as a sentence under the URL field."""
    if reason.startswith(("must ", "is ", "has ")):
        return f"The URL {reason}."
    if reason.startswith("not "):
        return f"This is {reason}."
    if reason.startswith("its "):
        return f"The URL's {reason.removeprefix('its ')}."
    if reason.startswith("URL "):
        return f"The {reason}."
    return f"{reason}."


def _pretty(body: str) -> str:
    """The exact body sent, indented for reading (as sent when it is not JSON)."""
    try:
        return json.dumps(json.loads(body), indent=2, ensure_ascii=False)
    except ValueError:
        return body
