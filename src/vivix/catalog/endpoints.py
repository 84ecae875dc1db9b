from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from vivix.accounts.gate import authorize
from vivix.catalog.schemas import ModelsOut, RateLimitInfo
from vivix.kit.http import PlainRoute, json_response, runtime_of

router = APIRouter(prefix="/api/v1", tags=["models"], route_class=PlainRoute)


@router.get("/models", summary="Models this key can call")
async def list_models(request: Request) -> Response:
    runtime = runtime_of(request)
    async with runtime.db.autocommit() as connection:
        caller = await authorize(request, connection)
    catalog = runtime.catalog
    account = caller.account
    allowed = set(account.allowed_models)
    models = [
        catalog.describe(model, account.price_overrides.get(model.slug))
        for model in catalog.all()
        if model.slug in allowed
    ]
    out = ModelsOut(
        tier=account.tier,
        credits_balance=account.balance,
        rate_limit=RateLimitInfo(
            calls_per_minute=caller.limits.calls_per_minute,
            concurrent_jobs=caller.limits.concurrent_jobs,
        ),
        models=models,
    )
    return json_response(out.model_dump())
