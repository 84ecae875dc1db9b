"""The credit ledger. Every movement is an append-only entry written in the same
transaction as the state change that causes it, with the account row locked; the cached
`balance`/`held` on the account move with it. Callers lock the account first
(`accounts.repository.lock_account`) and commit at their boundary."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from vivix.kit.bounds import MAX_BALANCE, MAX_CREDIT_AMOUNT
from vivix.kit.clock import add_months, utcnow
from vivix.kit.errors import AdminInvalid
from vivix.models import Account, LedgerEntry, LedgerKind


def _append(
    session: AsyncSession,
    account: Account,
    kind: LedgerKind,
    amount: int,
    *,
    generation_id: str | None = None,
    cycle_started_at: datetime | None = None,
    reason: str | None = None,
) -> None:
    session.add(
        LedgerEntry(
            account_id=account.id,
            kind=kind.value,
            amount=amount,
            generation_id=generation_id,
            cycle_started_at=cycle_started_at,
            reason=reason,
            created_at=utcnow(),
        )
    )
    account.balance += amount


def grant_cycle(
    session: AsyncSession, account: Account, amount: int, *, cycle_started_at: datetime
) -> None:
    """The grant of one billing cycle (at most one per cycle start, unique in the ledger)."""
    if amount > 0:
        _append(
            session,
            account,
            LedgerKind.GRANT,
            amount,
            cycle_started_at=cycle_started_at,
            reason="cycle grant",
        )
    account.granted_this_cycle += amount


def grant(session: AsyncSession, account: Account, amount: int, reason: str | None) -> None:
    """An operator's one-off grant; counts toward this cycle's granted credits."""
    if not 1 <= amount <= MAX_CREDIT_AMOUNT:
        raise AdminInvalid(
            "amount", f"must be a positive whole number of credits, at most {MAX_CREDIT_AMOUNT}"
        )
    _check_wallet_room(account, amount)
    _append(session, account, LedgerKind.GRANT, amount, reason=reason or "operator grant")
    account.granted_this_cycle += amount


def adjust(session: AsyncSession, account: Account, amount: int, reason: str) -> None:
    """A signed correction; it may not take the balance below zero."""
    if amount == 0:
        raise AdminInvalid("amount", "must not be zero")
    if account.balance + amount < 0:
        raise AdminInvalid("amount", f"would make the balance negative (balance {account.balance})")
    _check_wallet_room(account, amount)
    _append(session, account, LedgerKind.ADJUSTMENT, amount, reason=reason)


def _check_wallet_room(account: Account, amount: int) -> None:
    room = MAX_BALANCE - account.balance - account.held
    if amount > room:
        raise AdminInvalid(
            "amount",
            f"a wallet holds at most {MAX_BALANCE} credits; at most {max(0, room)} can be added",
        )


def settle(
    session: AsyncSession, account: Account, generation_id: str, held: int, charge: int
) -> None:
    """Release the whole hold and capture `charge` (0 ≤ charge ≤ held) in one step. The
    unique (generation, kind) constraint makes a second settlement fail instead of paying
    twice; callers guard with the generation's status as well."""
    if not 0 <= charge <= held:
        raise ValueError(f"charge {charge} outside 0..{held}")
    _append(session, account, LedgerKind.RELEASE, held, generation_id=generation_id)
    account.held -= held
    if charge:
        _append(session, account, LedgerKind.CAPTURE, -charge, generation_id=generation_id)
        account.spent_this_cycle += charge


def roll_cycles(session: AsyncSession, account: Account, monthly_credits: int) -> bool:
    """Advance past every cycle boundary that has passed, granting each cycle's credits.
    Idempotent under the account lock; returns whether anything changed."""
    now = utcnow()
    changed = False
    while account.cycle_resets_at <= now:
        started = account.cycle_resets_at
        account.cycle_started_at = started
        account.spent_this_cycle = 0
        account.granted_this_cycle = 0
        months = _months_between(account.cycle_anchor, started) + 1
        account.cycle_resets_at = add_months(account.cycle_anchor, months)
        grant_cycle(session, account, monthly_credits, cycle_started_at=started)
        changed = True
    if changed:
        account.updated_at = now
    return changed


def _months_between(anchor: datetime, moment: datetime) -> int:
    months = (moment.year - anchor.year) * 12 + moment.month - anchor.month
    while add_months(anchor, months) > moment:
        months -= 1
    while add_months(anchor, months + 1) <= moment:
        months += 1
    return months
