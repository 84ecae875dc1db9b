"""Ending a generation: its terminal state and its money move in one transaction.

Completed: capture the price of what was delivered (≤ the estimate held) and release the
hold. Failed or canceled: release the whole hold. Callers lock the generation row first
(and verify it is still theirs: lease for workers, active status for cancel); the ledger's
unique (generation, kind) constraint is the last line against paying twice.
Lock order is generation row → account row everywhere, so settlements can't deadlock.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from vivix.accounts import repository as accounts_repository
from vivix.billing import service as billing
from vivix.kit.clock import utcnow
from vivix.models import Generation, GenerationStatus


async def finalize(
    session: AsyncSession,
    generation: Generation,
    status: GenerationStatus,
    *,
    charge: int = 0,
    outputs: list[dict[str, Any]] | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
) -> None:
    """Move a locked, active generation to a terminal status and settle its hold."""
    account = await accounts_repository.lock_account(session, generation.account_id)
    generation.status = status.value
    generation.credits_used = charge
    generation.completed_at = utcnow()
    generation.lease_owner = None
    generation.lease_expires_at = None
    if outputs is not None:
        generation.outputs = outputs
        generation.progress = 1.0
    generation.error_code = error_code
    generation.error_message = error_message
    account.active_jobs -= 1
    if generation.credits_estimate:
        billing.settle(session, account, generation.id, generation.credits_estimate, charge)
    await session.flush()
