"""The gate in front of every /api/v1 call: auth → billing cycle → rate limit → tier
(API.md §2 order). Endpoints call `authorize` (or `pass_gate` with a caller row they read
together with their own data) before any work."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Row
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
from vivix.kit.db import ReadConnection
from vivix.kit.errors import RateLimited
from vivix.kit.http import context_of, runtime_of
from vivix.kit.logging import bind_account

if TYPE_CHECKING:
    from vivix.runtime import Runtime

KEY_TOUCH_EVERY = timedelta(minutes=5)

__all__ = ["Caller", "authorize", "pass_gate", "roll_cycle"]


async def authorize(request: Request, connection: ReadConnection) -> Caller:
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
    assert row is not None
    bind_account(caller.account.id)
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at >= KEY_TOUCH_EVERY:
        await _touch_key(runtime, row.key_id, now)
    if caller.account.cycle_resets_at <= utcnow():
        caller = replace(
            caller,
            account=await roll_cycle(runtime, caller.account.id, caller.limits.monthly_credits),
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


_touching: dict[str, datetime] = {}  # key id → when this process last recorded its use


async def _touch_key(runtime: Runtime, key_id: str, now: datetime) -> None:
    """Record when a key was last used, at most every few minutes and by one request of a
    burst: listings show it, and the API's hot path stays free of a write per call."""
    last = _touching.get(key_id)
    if last is not None and now - last < KEY_TOUCH_EVERY:
        return
    if len(_touching) > 10_000:
        _touching.clear()
    _touching[key_id] = now
    async with runtime.db.write_connection() as connection:
        await repository.touch_key(connection, key_id, now)


async def roll_cycle(runtime: Runtime, account_id: str, monthly_credits: int) -> AccountView:
    """The first call after a cycle boundary grants the new cycle (lazily, once); the API
    gate and the Studio's session both call it."""
    async with runtime.db.transaction() as session:
        await runtime.ledger.roll_cycles(session, account_id, monthly_credits)
        account = await repository.find_account(session, account_id)
        assert account is not None
        return AccountView.of(account)
