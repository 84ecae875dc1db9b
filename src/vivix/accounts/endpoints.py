"""The gate in front of every /api/v1 call: auth → rate limit → tier (API.md §2 order)."""

from __future__ import annotations

from dataclasses import replace

from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request

from vivix.accounts import repository
from vivix.accounts.service import AccountView, Caller, authenticate, require_api_access
from vivix.billing import service as billing
from vivix.kit.clock import utcnow
from vivix.kit.errors import RateLimited
from vivix.kit.http import context_of
from vivix.kit.runtime import Runtime

__all__ = ["Caller", "authorize", "runtime_of"]


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def authorize(request: Request, connection: AsyncConnection) -> Caller:
    """Authenticate on the request's read connection (the endpoint goes on using it)."""
    runtime = runtime_of(request)
    ctx = context_of(request)
    caller = await authenticate(
        connection, runtime.secret, request.headers.get("authorization"), runtime.settings
    )
    if caller.account.cycle_resets_at <= utcnow():
        caller = replace(
            caller,
            account=await _roll_cycle(runtime, caller.account.id, caller.limits.monthly_credits),
        )
    ctx.balance = caller.account.balance
    decision = await runtime.limiter.hit(caller.account.id, caller.limits.calls_per_minute)
    ctx.rate_limit = decision.limit
    ctx.rate_remaining = decision.remaining
    ctx.rate_reset_s = decision.reset_after_s
    if not decision.allowed:
        raise RateLimited(
            f"Over the limit of {decision.limit} calls per minute.",
            headers={"Retry-After": str(decision.reset_after_s)},
            retry_after=decision.reset_after_s,
        )
    require_api_access(caller.account, runtime.settings)
    return caller


async def _roll_cycle(runtime: Runtime, account_id: str, monthly_credits: int) -> AccountView:
    async with runtime.db.transaction() as session:
        account = await repository.lock_account(session, account_id)
        billing.roll_cycles(session, account, monthly_credits)
        return AccountView.of(account)
