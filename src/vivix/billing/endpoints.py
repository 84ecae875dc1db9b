from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from vivix.accounts.gate import authorize
from vivix.billing.schemas import CreditsOut
from vivix.catalog.schemas import RateLimitInfo
from vivix.kit.clock import iso
from vivix.kit.http import PlainRoute, json_response, runtime_of

router = APIRouter(prefix="/api/v1", tags=["credits"], route_class=PlainRoute)


@router.get("/credits", summary="The account's wallet")
async def credits(request: Request) -> Response:
    async with runtime_of(request).db.autocommit() as connection:
        caller = await authorize(request, connection)
    account = caller.account
    out = CreditsOut(
        balance=account.balance,
        held=account.held,
        tier=account.tier,
        cycle_resets_at=iso(account.cycle_resets_at) or "",
        rate_limit=RateLimitInfo(
            calls_per_minute=caller.limits.calls_per_minute,
            concurrent_jobs=caller.limits.concurrent_jobs,
        ),
        spent_this_cycle=account.spent_this_cycle,
        granted_this_cycle=account.granted_this_cycle,
    )
    return json_response(out.model_dump())
