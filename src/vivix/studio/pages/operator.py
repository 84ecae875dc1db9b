"""Operator pages (operators only; everyone else gets 404): accounts (search, create, tier,
limits, credits, allowlist, price overrides, suspension), users, keys, the catalog with
each route's state, recent failures and the queue. Every change goes through
`admin.service`, the same operations as the CLI and /admin/v1."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from vivix.accounts import repository as accounts_repository
from vivix.admin import service as admin
from vivix.generations import repository as generations_repository
from vivix.kit.errors import AdminInvalid, InvalidParams, VivixError
from vivix.kit.http import runtime_of
from vivix.settings import Tier
from vivix.studio.web import (
    StudioRoute,
    read_form,
    redirect,
    require_operator,
    web_of,
)
from vivix.users.service import Viewer

router = APIRouter(route_class=StudioRoute, prefix="/operator")
LIST_LIMIT = 200
TIERS = [t.value for t in Tier]
FLASHES = {
    "created": "Account created.",
    "limits": "Tier and limits saved.",
    "granted": "Credits granted.",
    "models": "Models saved.",
    "pricing": "Price override saved.",
    "suspended": "Account suspended: its keys and sign-ins are refused.",
    "reinstated": "Account reinstated.",
    "revoked": "Key revoked.",
}


def _flash(request: Request) -> dict[str, str] | None:
    text = FLASHES.get(request.query_params.get("done", ""))
    return {"kind": "ok", "text": text} if text else None


def _page(
    request: Request,
    viewer: Viewer,
    template: str,
    context: dict[str, Any],
    status: int = 200,
) -> Response:
    return web_of(request).page(
        request,
        f"operator/{template}",
        {"flash": _flash(request), "tiers": TIERS, **context},
        viewer=viewer,
        status=status,
    )


def actor_of(viewer: Viewer, request: Request) -> admin.Actor:
    """The audit log's name for an operator acting from the Studio."""
    return admin.Actor(f"studio:{viewer.email}", request.headers.get("x-request-id"))


def _int_field(form: FormData, name: str, *, minimum: int) -> int | None:
    raw = str(form.get(name) or "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < minimum:
        raise AdminInvalid(name, f"must be a whole number of at least {minimum}")
    return int(raw)


@router.get("")
async def operator_home(request: Request) -> Response:
    await require_operator(request)
    return redirect("/operator/accounts")


@router.get("/accounts")
async def accounts_page(request: Request) -> Response:
    viewer = await require_operator(request)
    return await _accounts(request, viewer)


async def _accounts(
    request: Request, viewer: Viewer, errors: dict[str, str] | None = None, status: int = 200
) -> Response:
    runtime = runtime_of(request)
    query = (request.query_params.get("q") or "").strip()[:100]
    async with runtime.db.read() as session:
        found = await accounts_repository.search_accounts(session, query, LIST_LIMIT)
    context = {
        "active": "op-accounts",
        "query": query,
        "accounts": [admin.account_out(a, runtime) for a in found],
        "errors": errors or {},
    }
    return _page(request, viewer, "accounts.html", context, status)


@router.post("/accounts")
async def create_account(request: Request) -> Response:
    viewer = await require_operator(request)
    form = await read_form(request, viewer)
    runtime = runtime_of(request)
    try:
        created = await admin.create_account(
            runtime,
            str(form.get("name") or "").strip(),
            str(form.get("tier") or "free"),
            _int_field(form, "credits", minimum=0),
            actor=actor_of(viewer, request),
        )
    except VivixError as exc:
        field = str(exc.extra.get("field", "name"))
        return await _accounts(request, viewer, {field: exc.message}, status=exc.status)
    return redirect(f"/operator/accounts/{created['id']}?done=created")


@router.get("/accounts/{account_id}")
async def account_page(request: Request, account_id: str) -> Response:
    viewer = await require_operator(request)
    return await _account(request, viewer, account_id)


async def _account(
    request: Request,
    viewer: Viewer,
    account_id: str,
    *,
    errors: dict[str, str] | None = None,
    new_user: dict[str, Any] | None = None,
    status: int = 200,
) -> Response:
    runtime = runtime_of(request)
    shown = await admin.show_account(runtime, account_id)
    users = await admin.list_account_users(runtime, shown["id"])
    changes = await admin.list_audit_log(runtime, limit=CHANGES_SHOWN, account=shown["id"])
    models = sorted(runtime.catalog.all(), key=lambda m: (m.spec.category, m.spec.name))
    context = {
        "active": "op-accounts",
        "account": shown,
        "users": users,
        "models": models,
        "allowed": set(shown["allowed_models"]),
        "errors": errors or {},
        "new_user": new_user,
        "changes": [_change_view(entry) for entry in changes["data"]],
        "more_changes": changes["has_more"],
    }
    return _page(request, viewer, "account.html", context, status)


CHANGES_SHOWN = 20


def _change_view(entry: dict[str, Any]) -> dict[str, Any]:
    """An audit entry as the account page lists it: each changed field before → after."""
    before, after = entry["before"] or {}, entry["after"] or {}
    fields = [
        {
            "name": name,
            "before": _shown_value(before.get(name)),
            "after": _shown_value(after.get(name)),
        }
        for name in sorted(set(before) | set(after))
    ]
    return {**entry, "fields": fields}


def _shown_value(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "none"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True) if value else "none"
    return str(value)


async def _account_action(request: Request, account_id: str, done: str, action: Any) -> Response:
    """Run one change from a form (as the viewer, for the audit log); a refused change
    shows the page with its error."""
    viewer = await require_operator(request)
    form = await read_form(request, viewer)
    try:
        await action(runtime_of(request), form, actor_of(viewer, request))
    except (AdminInvalid, InvalidParams) as exc:
        errors = {str(exc.extra.get("field", "form")): str(exc.extra.get("reason", exc.message))}
        return await _account(request, viewer, account_id, errors=errors, status=422)
    return redirect(f"/operator/accounts/{account_id}?done={done}")


@router.post("/accounts/{account_id}/limits")
async def save_limits(request: Request, account_id: str) -> Response:
    async def change(runtime: Any, form: FormData, actor: admin.Actor) -> None:
        await admin.update_account(
            runtime,
            account_id,
            tier=str(form.get("tier") or "") or None,
            calls_per_minute=_int_field(form, "calls_per_minute", minimum=1),
            concurrent_jobs=_int_field(form, "concurrent_jobs", minimum=1),
            monthly_credits=_int_field(form, "monthly_credits", minimum=0),
            actor=actor,
        )

    return await _account_action(request, account_id, "limits", change)


@router.post("/accounts/{account_id}/grant")
async def grant(request: Request, account_id: str) -> Response:
    async def change(runtime: Any, form: FormData, actor: admin.Actor) -> None:
        amount = _int_field(form, "amount", minimum=1)
        if amount is None:
            raise AdminInvalid("amount", "enter how many credits to grant")
        reason = str(form.get("reason") or "").strip()[:500] or None
        await admin.grant_credits(runtime, account_id, amount, reason, actor=actor)

    return await _account_action(request, account_id, "granted", change)


@router.post("/accounts/{account_id}/models")
async def save_models(request: Request, account_id: str) -> Response:
    async def change(runtime: Any, form: FormData, actor: admin.Actor) -> None:
        chosen = {str(v) for v in form.getlist("models")}
        known = {m.slug for m in runtime.catalog.all()}
        current = set((await admin.show_account(runtime, account_id))["allowed_models"])
        if chosen - current:
            await admin.set_models(
                runtime, account_id, sorted(chosen - current), allow=True, actor=actor
            )
        removed = (current & known) - chosen
        if removed:
            await admin.set_models(runtime, account_id, sorted(removed), allow=False, actor=actor)

    return await _account_action(request, account_id, "models", change)


@router.post("/accounts/{account_id}/pricing")
async def save_price(request: Request, account_id: str) -> Response:
    async def change(runtime: Any, form: FormData, actor: admin.Actor) -> None:
        slug = str(form.get("model") or "")
        if form.get("clear") == "1":
            await admin.set_price_override(runtime, account_id, slug, clear=True, actor=actor)
            return
        factor = str(form.get("factor") or "").strip()
        if not factor:
            raise AdminInvalid("factor", "enter a factor such as 0.8")
        await admin.set_price_override(runtime, account_id, slug, factor=factor, actor=actor)

    return await _account_action(request, account_id, "pricing", change)


@router.post("/accounts/{account_id}/suspension")
async def suspension(request: Request, account_id: str) -> Response:
    viewer = await require_operator(request)
    form = await read_form(request, viewer)
    suspend = form.get("suspend") == "1"
    await admin.set_suspended(
        runtime_of(request), account_id, suspended=suspend, actor=actor_of(viewer, request)
    )
    done = "suspended" if suspend else "reinstated"
    return redirect(f"/operator/accounts/{account_id}?done={done}")


@router.post("/accounts/{account_id}/users")
async def add_user(request: Request, account_id: str) -> Response:
    viewer = await require_operator(request)
    form = await read_form(request, viewer)
    runtime = runtime_of(request)
    try:
        created = await admin.create_user(
            runtime,
            str(form.get("email") or ""),
            account=account_id,
            operator=form.get("operator") == "1",
            actor=actor_of(viewer, request),
        )
    except VivixError as exc:
        field = str(exc.extra.get("field", "email"))
        reason = str(exc.extra.get("reason", exc.message))
        return await _account(
            request, viewer, account_id, errors={field: reason}, status=exc.status
        )
    return await _account(request, viewer, account_id, new_user=created, status=201)


@router.post("/keys/{key_id}/revoke")
async def revoke_key(request: Request, key_id: str) -> Response:
    viewer = await require_operator(request)
    form = await read_form(request, viewer)
    revoked = await admin.revoke_key(runtime_of(request), key_id, actor=actor_of(viewer, request))
    back = str(form.get("back") or "")
    if back == "account":
        return redirect(f"/operator/accounts/{revoked['account_id']}?done=revoked")
    return redirect("/operator/keys?done=revoked")


@router.get("/users")
async def users_page(request: Request) -> Response:
    viewer = await require_operator(request)
    query = (request.query_params.get("q") or "").strip()[:100]
    users = await admin.list_users(runtime_of(request), query)
    return _page(
        request, viewer, "users.html", {"active": "op-users", "users": users, "query": query}
    )


@router.get("/keys")
async def keys_page(request: Request) -> Response:
    viewer = await require_operator(request)
    runtime = runtime_of(request)
    query = (request.query_params.get("q") or "").strip()[:100]
    async with runtime.db.read() as session:
        rows = await accounts_repository.list_keys_with_accounts(session, query, LIST_LIMIT)
    keys = [{**admin.key_out(row.ApiKey), "account": row.account_name} for row in rows]
    for key, row in zip(keys, rows, strict=True):
        key["last_used_at"] = row.ApiKey.last_used_at
    return _page(request, viewer, "keys.html", {"active": "op-keys", "keys": keys, "query": query})


@router.get("/catalog")
async def catalog_page(request: Request) -> Response:
    viewer = await require_operator(request)
    models = await admin.catalog_list(runtime_of(request))
    return _page(request, viewer, "catalog.html", {"active": "op-catalog", "models": models})


@router.get("/queue")
async def queue_page(request: Request) -> Response:
    viewer = await require_operator(request)
    runtime = runtime_of(request)
    async with runtime.db.autocommit() as connection:
        by_model = await generations_repository.queue_by_model(connection)
        running = await generations_repository.active_generations(connection, 50)
        failures = await generations_repository.recent_failures(connection, 50)
    names = {m.slug: m.spec.name for m in runtime.catalog.all()}
    context = {
        "active": "op-queue",
        "by_model": by_model,
        "running": running,
        "failures": failures,
        "names": names,
        "totals": {
            "pending": sum(int(r.pending or 0) for r in by_model),
            "processing": sum(int(r.processing or 0) for r in by_model),
        },
        "search": lambda q: urlencode({"q": q}),
    }
    return _page(request, viewer, "queue.html", context)
