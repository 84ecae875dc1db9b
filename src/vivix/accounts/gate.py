"""The gate in front of every /api/v1 call: auth → billing cycle → rate limit → tier
(API.md §2 order). Endpoints call `authorize` (or `pass_gate` with a caller row they read
together with their own data) before any work."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request

from vivix.accounts import repository
from vivix.accounts.service import (
    AccountView,
    Caller,
    caller_from_row,
    key_hash_from_header,
    require_api_access,
)
from vivix.kit.clock import utcnow
from vivix.kit.errors import RateLimited
from vivix.kit.http import context_of, runtime_of

__all__ = ["Caller", "authorize", "pass_gate"]


async def authorize(request: Request, connection: AsyncConnection) -> Caller:
    """The gate, reading the caller on the request's connection."""
    runtime = runtime_of(request)
    key_hash = key_hash_from_header(runtime.secret, request.headers.get("authorization"))
    return await pass_gate(request, await repository.get_caller(connection, key_hash))


async def pass_gate(request: Request, row: Row[Any] | None) -> Caller:
    """The gate for a caller row already read (`accounts.repository.select_caller`):
    key → billing cycle → rate limit → tier."""
    runtime = runtime_of(request)
    ctx = context_of(request)
    caller = caller_from_row(row, runtime.settings)
    if caller.account.cycle_resets_at <= utcnow():
        caller = replace(caller, account=await _roll_cycle(request, caller))
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


async def _roll_cycle(request: Request, caller: Caller) -> AccountView:
    """The first call after a cycle boundary grants the new cycle (lazily, once)."""
    runtime = runtime_of(request)
    async with runtime.db.transaction() as session:
        await runtime.ledger.roll_cycles(session, caller.account.id, caller.limits.monthly_credits)
        account = await repository.find_account(session, caller.account.id)
        assert account is not None
        return AccountView.of(account)
