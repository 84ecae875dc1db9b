from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from vivix.accounts.gate import authorize
from vivix.accounts.service import Caller
from vivix.catalog.availability import availability_of
from vivix.catalog.schemas import ModelOut, ModelsOut, RateLimitInfo
from vivix.catalog.service import CatalogModel
from vivix.kit.errors import ModelNotFound
from vivix.kit.http import PlainRoute, json_response, runtime_of

if TYPE_CHECKING:
    from vivix.runtime import Runtime

router = APIRouter(prefix="/api/v1", tags=["models"], route_class=PlainRoute)


@router.get("/models", summary="Models this key can call")
async def list_models(request: Request) -> Response:
    runtime = runtime_of(request)
    async with runtime.db.autocommit() as connection:
        caller = await authorize(request, connection)
    allowed = set(caller.account.allowed_models)
    chosen = [model for model in runtime.catalog.all() if model.slug in allowed]
    account = caller.account
    out = ModelsOut(
        tier=account.tier,
        credits_balance=account.balance,
        rate_limit=RateLimitInfo(
            calls_per_minute=caller.limits.calls_per_minute,
            concurrent_jobs=caller.limits.concurrent_jobs,
        ),
        models=await _described(runtime, caller, chosen),
    )
    return json_response(out.model_dump())


@router.get("/models/{slug}", summary="One model this key can call")
async def read_model(request: Request, slug: str) -> Response:
    runtime = runtime_of(request)
    async with runtime.db.autocommit() as connection:
        caller = await authorize(request, connection)
    model = runtime.catalog.get(slug)
    # Not-allowed is indistinguishable from unknown, like the listing that omits it.
    if model is None or slug not in caller.account.allowed_models:
        raise ModelNotFound(f"There is no model called {slug[:100]!r}.", model=slug[:100])
    (described,) = await _described(runtime, caller, [model])
    return json_response(described.model_dump())


async def _described(
    runtime: Runtime, caller: Caller, models: list[CatalogModel]
) -> list[ModelOut]:
    open_routes = await runtime.circuits.open_routes()
    overrides = caller.account.price_overrides
    described = []
    for model in models:
        state = availability_of(model, runtime.settings, open_routes, test_key=caller.is_test)
        described.append(
            runtime.catalog.describe(
                model,
                overrides.get(model.slug),
                available=state.available,
                unavailable_reason=state.reason,
            )
        )
    return described
