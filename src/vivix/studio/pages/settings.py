"""Settings → API & Webhooks (keys: created and shown once, listed by prefix, revoked;
the webhook endpoints are in `pages.webhooks`) and Settings → Account (password,
signed-in devices)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from vivix.accounts import repository as accounts_repository
from vivix.accounts import service as accounts
from vivix.kit.clock import parse_iso
from vivix.kit.errors import InvalidParams, KeyNotFound
from vivix.kit.http import runtime_of
from vivix.kit.ids import is_uuid
from vivix.studio.web import (
    StudioRoute,
    read_form,
    redirect,
    require_viewer,
    web_of,
)
from vivix.users import service
from vivix.users.service import Viewer
from vivix.webhooks import service as webhooks

router = APIRouter(route_class=StudioRoute)
FLASHES = {
    "revoked": ("ok", "Key revoked: calls with it now fail with 401."),
    "webhook-deleted": ("ok", "Webhook endpoint deleted, with its queued deliveries."),
    "password": ("ok", "Password changed. Your other devices were signed out."),
    "signed-out": ("ok", "That device is signed out."),
    "signed-out-others": ("ok", "Every other device is signed out."),
}


def flash_of(
    request: Request, table: dict[str, tuple[str, str]] = FLASHES
) -> dict[str, str] | None:
    """The message named by `?done=` after a redirect."""
    found = table.get(request.query_params.get("done", ""))
    return {"kind": found[0], "text": found[1]} if found else None


async def api_settings_page(
    request: Request,
    viewer: Viewer,
    *,
    new_key: dict[str, Any] | None = None,
    errors: dict[str, str] | None = None,
    webhook: dict[str, Any] | None = None,
    status: int = 200,
) -> Response:
    """The page; `webhook` carries the webhook form's state (errors, values, a new secret)."""
    runtime = runtime_of(request)
    async with runtime.db.read() as session:
        keys = await accounts_repository.list_account_keys(session, viewer.account.id)
    endpoints = await webhooks.list_endpoints(runtime, viewer.account.id)
    context = {
        "active": "settings-api",
        "account": viewer.account,
        "limits": viewer.limits,
        "keys": keys,
        "new_key": new_key,
        "errors": errors or {},
        "flash": flash_of(request),
        "endpoints": [dated(e) for e in endpoints],
        "max_endpoints": webhooks.MAX_ENDPOINTS,
        "subscribable": webhooks.SUBSCRIBABLE,
        "webhook": webhook or {},
    }
    return web_of(request).page(request, "settings_api.html", context, viewer=viewer, status=status)


@router.get("/settings")
async def settings_home(request: Request) -> Response:
    await require_viewer(request)
    return redirect("/settings/api")


@router.get("/settings/api")
async def api_page(request: Request) -> Response:
    return await api_settings_page(request, await require_viewer(request))


@router.post("/settings/api/keys")
async def create_key(request: Request) -> Response:
    """The key is in this response only (never stored, never shown again)."""
    viewer = await require_viewer(request)
    form = await read_form(request, viewer)
    runtime = runtime_of(request)
    accounts.require_api_access(viewer.account, runtime.settings)
    name = str(form.get("name") or "").strip()
    try:
        async with runtime.db.transaction() as session:
            account = await accounts_repository.lock_account(session, viewer.account.id)
            key, plaintext = await accounts.create_key(session, runtime.secret, account, name=name)
    except InvalidParams as exc:
        return await api_settings_page(request, viewer, errors={"name": exc.message}, status=422)
    return await api_settings_page(
        request,
        viewer,
        new_key={"name": key.name, "prefix": key.prefix, "key": plaintext},
        status=201,
    )


@router.post("/settings/api/keys/{key_id}/revoke")
async def revoke_key(request: Request, key_id: str) -> Response:
    viewer = await require_viewer(request)
    await read_form(request, viewer)
    runtime = runtime_of(request)
    if not is_uuid(key_id):
        raise KeyNotFound()
    async with runtime.db.transaction() as session:
        await accounts.revoke_account_key(session, viewer.account.id, key_id)
    return redirect("/settings/api?done=revoked")


async def _account_page(
    request: Request, viewer: Viewer, errors: dict[str, str] | None = None, status: int = 200
) -> Response:
    sessions = await service.list_sessions(runtime_of(request), viewer)
    context = {
        "active": "settings-account",
        "errors": errors or {},
        "flash": flash_of(request),
        "sessions": [
            {
                "id": s.id,
                "device": describe_device(s.user_agent),
                "client_address": s.client_address,
                "created_at": s.created_at,
                "last_seen_at": s.last_seen_at,
                "current": s.id == viewer.session_id,
            }
            for s in sessions
        ],
    }
    return web_of(request).page(
        request, "settings_account.html", context, viewer=viewer, status=status
    )


@router.get("/settings/account")
async def account_page(request: Request) -> Response:
    return await _account_page(request, await require_viewer(request))


@router.post("/settings/account/password")
async def change_password(request: Request) -> Response:
    viewer = await require_viewer(request)
    form = await read_form(request, viewer)
    new = str(form.get("new_password") or "")
    try:
        if new != str(form.get("new_password_again") or ""):
            raise InvalidParams("new_password_again", "does not match the new password")
        await service.change_password(
            runtime_of(request), viewer, str(form.get("current_password") or ""), new
        )
    except InvalidParams as exc:
        errors = {str(exc.extra["field"]): str(exc.extra["reason"])}
        return await _account_page(request, viewer, errors, status=422)
    return redirect("/settings/account?done=password")


@router.post("/settings/account/sessions/others")
async def sign_out_others(request: Request) -> Response:
    viewer = await require_viewer(request)
    await read_form(request, viewer)
    await service.sign_out_others(runtime_of(request), viewer)
    return redirect("/settings/account?done=signed-out-others")


@router.post("/settings/account/sessions/{session_id}/revoke")
async def sign_out_session(request: Request, session_id: str) -> Response:
    viewer = await require_viewer(request)
    await read_form(request, viewer)
    await service.sign_out_session(runtime_of(request), viewer, session_id[:64])
    return redirect("/settings/account?done=signed-out")


def dated(values: dict[str, Any]) -> dict[str, Any]:
    """A service's API-shaped dict with its `…_at` timestamps as datetimes (for the filters)."""
    return {
        name: parse_iso(value)
        if (name == "at" or name.endswith("_at")) and isinstance(value, str)
        else value
        for name, value in values.items()
    }


def describe_device(user_agent: str) -> str:
    """'Firefox on Linux' from a User-Agent, or the plain fact that it is unknown."""
    ua = user_agent.lower()
    browser = next(
        (
            name
            for token, name in (
                ("edg/", "Edge"),
                ("firefox/", "Firefox"),
                ("chrome/", "Chrome"),
                ("chromium", "Chromium"),
                ("safari/", "Safari"),
                ("curl/", "curl"),
            )
            if token in ua
        ),
        None,
    )
    system = next(
        (
            name
            for token, name in (
                ("android", "Android"),
                ("iphone", "iOS"),
                ("ipad", "iPadOS"),
                ("windows", "Windows"),
                ("mac os", "macOS"),
                ("linux", "Linux"),
            )
            if token in ua
        ),
        None,
    )
    if browser and system:
        return f"{browser} on {system}"
    return browser or system or "Unknown device"
