"""/admin/v1: the operator's API, the same operations as the CLI."""

from __future__ import annotations

import hmac

import structlog
from fastapi import APIRouter, Depends
from starlette.requests import Request
from starlette.responses import Response

from vivix.admin import schemas, service, webhooks
from vivix.kit.errors import AdminThrottled, AdminUnauthorized
from vivix.kit.http import context_of, json_response, runtime_of
from vivix.kit.pagination import parse_limit

log = structlog.get_logger(__name__)


FAILED_ADMIN_ATTEMPTS = "admin-failed"


async def require_admin(request: Request) -> None:
    """The admin token, checked in constant time. Wrong tokens are counted per client
    address (the proxy's forwarded address when uvicorn trusts it); past the per-minute
    allowance every attempt from there, right or wrong, gets 429 until the window ends."""
    runtime = runtime_of(request)
    token = runtime.settings.admin_token
    if not token:
        raise AdminUnauthorized("The admin API is disabled: VIVIX_ADMIN_TOKEN is not set.")
    client = request.client.host if request.client else "unknown"
    allowance = runtime.settings.admin.failed_attempts_per_minute
    wait = await runtime.limiter.exhausted_for(FAILED_ADMIN_ATTEMPTS, client, allowance)
    if wait is not None:
        raise AdminThrottled(wait)
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), token.encode()
    ):
        await runtime.limiter.hit_key(FAILED_ADMIN_ATTEMPTS, client, allowance)
        log.warning("admin_token_refused", client=client)
        raise AdminUnauthorized()


router = APIRouter(prefix="/admin/v1", tags=["admin"], dependencies=[Depends(require_admin)])


def actor_of(request: Request) -> service.Actor:
    """The audit log's name for whoever holds the admin token, with the request id."""
    client = request.client.host if request.client else "unknown"
    return service.Actor(f"admin-token@{client}", context_of(request).request_id)


@router.get("/accounts")
async def list_accounts(request: Request) -> Response:
    return json_response({"data": await service.list_accounts(runtime_of(request))})


@router.post("/accounts", status_code=201)
async def create_account(request: Request, body: schemas.AccountCreate) -> Response:
    out = await service.create_account(
        runtime_of(request), body.name, body.tier, body.credits, actor=actor_of(request)
    )
    return json_response(out, 201)


@router.get("/accounts/{account}")
async def show_account(request: Request, account: str) -> Response:
    return json_response(await service.show_account(runtime_of(request), account))


@router.patch("/accounts/{account}")
async def update_account(request: Request, account: str, body: schemas.AccountUpdate) -> Response:
    out = await service.update_account(
        runtime_of(request),
        account,
        tier=body.tier,
        calls_per_minute=body.calls_per_minute,
        concurrent_jobs=body.concurrent_jobs,
        monthly_credits=body.monthly_credits,
        actor=actor_of(request),
    )
    return json_response(out)


@router.post("/accounts/{account}/suspend")
async def suspend_account(request: Request, account: str) -> Response:
    """Keys answer 403 ACCOUNT_SUSPENDED, Studio sessions end; nothing is deleted."""
    return json_response(
        await service.set_suspended(
            runtime_of(request), account, suspended=True, actor=actor_of(request)
        )
    )


@router.post("/accounts/{account}/reinstate")
async def reinstate_account(request: Request, account: str) -> Response:
    return json_response(
        await service.set_suspended(
            runtime_of(request), account, suspended=False, actor=actor_of(request)
        )
    )


@router.get("/users")
async def list_users(request: Request) -> Response:
    query = request.query_params.get("q") or ""
    return json_response({"data": await service.list_users(runtime_of(request), query)})


@router.post("/users", status_code=201)
async def create_user(request: Request, body: schemas.UserCreate) -> Response:
    """A Studio user; without `password` one is generated and returned once."""
    out = await service.create_user(
        runtime_of(request),
        body.email,
        account=body.account,
        operator=body.operator,
        password=body.password,
        actor=actor_of(request),
    )
    return json_response(out, 201)


@router.get("/accounts/{account}/keys")
async def list_keys(request: Request, account: str) -> Response:
    return json_response({"data": await service.list_keys(runtime_of(request), account)})


@router.post("/accounts/{account}/keys", status_code=201)
async def create_key(request: Request, account: str, body: schemas.KeyCreate) -> Response:
    out = await service.create_key(
        runtime_of(request), account, body.name, body.test, actor=actor_of(request)
    )
    return json_response(out, 201)


@router.post("/keys/{prefix_or_id}/revoke")
async def revoke_key(request: Request, prefix_or_id: str) -> Response:
    return json_response(
        await service.revoke_key(runtime_of(request), prefix_or_id, actor=actor_of(request))
    )


@router.post("/accounts/{account}/credits")
async def grant_credits(request: Request, account: str, body: schemas.CreditGrant) -> Response:
    out = await service.grant_credits(
        runtime_of(request), account, body.amount, body.reason, actor=actor_of(request)
    )
    return json_response(out)


@router.post("/accounts/{account}/credits/adjust")
async def adjust_credits(
    request: Request, account: str, body: schemas.CreditAdjustment
) -> Response:
    out = await service.adjust_credits(
        runtime_of(request), account, body.amount, body.reason, actor=actor_of(request)
    )
    return json_response(out)


@router.post("/accounts/{account}/models/allow")
async def allow_models(request: Request, account: str, body: schemas.ModelSlugs) -> Response:
    return json_response(
        await service.set_models(
            runtime_of(request), account, body.slugs, allow=True, actor=actor_of(request)
        )
    )


@router.post("/accounts/{account}/models/deny")
async def deny_models(request: Request, account: str, body: schemas.ModelSlugs) -> Response:
    return json_response(
        await service.set_models(
            runtime_of(request), account, body.slugs, allow=False, actor=actor_of(request)
        )
    )


@router.put("/accounts/{account}/pricing/{slug}")
async def override_price(
    request: Request, account: str, slug: str, body: schemas.PriceOverrideIn
) -> Response:
    factor = None if body.factor is None else str(body.factor)
    out = await service.set_price_override(
        runtime_of(request), account, slug, factor=factor, rows=body.rows, actor=actor_of(request)
    )
    return json_response(out)


@router.delete("/accounts/{account}/pricing/{slug}")
async def clear_price(request: Request, account: str, slug: str) -> Response:
    return json_response(
        await service.set_price_override(
            runtime_of(request), account, slug, clear=True, actor=actor_of(request)
        )
    )


@router.get("/audit")
async def audit(request: Request) -> Response:
    """The money audit: 200 with `ok: true`, or 409 listing every offending row."""
    report = await service.audit(runtime_of(request))
    return json_response(report, 200 if report["ok"] else 409)


@router.get("/generations/{generation_id}")
async def show_generation(request: Request, generation_id: str) -> Response:
    return json_response(await service.show_generation(runtime_of(request), generation_id))


@router.get("/catalog")
async def catalog(request: Request) -> Response:
    return json_response({"data": await service.catalog_list(runtime_of(request))})


@router.get("/audit-log")
async def audit_log(request: Request) -> Response:
    """Every operator action, newest first; filters `account` (name or id), `action`
    (e.g. credits.grant), `actor`; cursor pagination as in the public API."""
    query = request.query_params
    page = await service.list_audit_log(
        runtime_of(request),
        limit=parse_limit(query.get("limit")),
        cursor=query.get("cursor") or None,
        account=query.get("account") or None,
        action=query.get("action") or None,
        actor=query.get("actor") or None,
    )
    return json_response(page)


@router.get("/accounts/{account}/webhooks")
async def list_webhooks(request: Request, account: str) -> Response:
    return json_response({"data": await webhooks.list_webhooks(runtime_of(request), account)})


@router.post("/accounts/{account}/webhooks", status_code=201)
async def add_webhook(request: Request, account: str, body: schemas.WebhookAdd) -> Response:
    out = await webhooks.add_webhook(
        runtime_of(request),
        account,
        body.url,
        events=body.events,
        description=body.description,
        include_studio=body.include_studio,
        actor=actor_of(request),
    )
    return json_response(out, 201)


@router.post("/accounts/{account}/webhooks/{webhook_id}/rotate")
async def rotate_webhook(
    request: Request, account: str, webhook_id: str, body: schemas.WebhookRotate
) -> Response:
    out = await webhooks.rotate_webhook(
        runtime_of(request),
        account,
        webhook_id,
        expire_previous_now=body.expire_previous_now,
        actor=actor_of(request),
    )
    return json_response(out)


@router.post("/accounts/{account}/webhooks/{webhook_id}/disable")
async def disable_webhook(
    request: Request, account: str, webhook_id: str, body: schemas.WebhookDisable
) -> Response:
    out = await webhooks.disable_webhook(
        runtime_of(request), account, webhook_id, reason=body.reason, actor=actor_of(request)
    )
    return json_response(out)
