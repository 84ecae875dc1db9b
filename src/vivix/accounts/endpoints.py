"""The gate in front of every /api/v1 call: auth → rate limit → tier (API.md §2 order)."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from vivix.accounts import repository
from vivix.accounts.service import AccountLimits, authenticate, limits_for, require_api_access
from vivix.billing import service as billing
from vivix.kit.clock import utcnow
from vivix.kit.errors import RateLimited
from vivix.kit.http import context_of
from vivix.kit.runtime import Runtime
from vivix.models import Account, ApiKey


@dataclass(frozen=True, slots=True)
class Caller:
    key: ApiKey
    account: Account
    limits: AccountLimits

    @property
    def is_test(self) -> bool:
        return self.key.is_test


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def authorize(request: Request) -> Caller:
    runtime = runtime_of(request)
    ctx = context_of(request)
    async with runtime.db.read() as session:
        key, account = await authenticate(
            session, runtime.secret, request.headers.get("authorization")
        )
    limits = limits_for(account, runtime.settings)
    if account.cycle_resets_at <= utcnow():
        account = await _roll_cycle(runtime, account.id, limits.monthly_credits)
    ctx.balance = account.balance
    decision = await runtime.limiter.hit(account.id, limits.calls_per_minute)
    ctx.rate_limit = decision.limit
    ctx.rate_remaining = decision.remaining
    ctx.rate_reset_s = decision.reset_after_s
    if not decision.allowed:
        raise RateLimited(
            f"Over the limit of {decision.limit} calls per minute.",
            headers={"Retry-After": str(decision.reset_after_s)},
            retry_after=decision.reset_after_s,
        )
    require_api_access(account, runtime.settings)
    return Caller(key=key, account=account, limits=limits)


async def _roll_cycle(runtime: Runtime, account_id: str, monthly_credits: int) -> Account:
    async with runtime.db.transaction() as session:
        account = await repository.lock_account(session, account_id)
        billing.roll_cycles(session, account, monthly_credits)
    return account
