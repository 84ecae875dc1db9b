"""Ending a generation: the one place every final state passes through.

`commit_final_state` moves a generation to completed, failed or canceled and settles its
hold (`billing.ledger`) in one transaction, then, after the commit, tells a canceled job's
worker. The API's cancel, the worker's complete and fail, and the reaper all end
generations here and nowhere else, so whatever must commit together with a final state
(webhook outbox rows, the change-feed event of `events.feed`) belongs in this transaction.

Lock order is generation row → account row (the ledger's update), as everywhere.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession

from vivix.events import feed
from vivix.generations.schemas import webhook_payload
from vivix.kit.clock import utcnow
from vivix.kit.metrics import observe_finished
from vivix.kit.wakeup import notify_canceled
from vivix.models import Generation, GenerationStatus
from vivix.webhooks.outbox import queue_generation_event

if TYPE_CHECKING:
    from vivix.runtime import Runtime

LockGeneration = Callable[[AsyncSession], Awaitable[Generation | None]]


@dataclass(frozen=True, slots=True)
class FinalState:
    """What a generation ends as. `charge` is what is captured of the hold (0 ≤ charge ≤
    `credits_estimate`, see `catalog.pricing.final_charge`); the rest is released."""

    status: GenerationStatus
    charge: int = 0
    outputs: list[dict[str, Any]] | None = None
    error_code: str | None = None
    error_message: str | None = None

    @classmethod
    def completed(cls, outputs: list[dict[str, Any]], charge: int) -> FinalState:
        return cls(GenerationStatus.COMPLETED, charge=charge, outputs=outputs)

    @classmethod
    def failed(cls, code: str, message: str) -> FinalState:
        return cls(GenerationStatus.FAILED, error_code=code, error_message=message)

    @classmethod
    def canceled(cls) -> FinalState:
        return cls(GenerationStatus.CANCELED)


async def commit_final_state(
    runtime: Runtime, lock: LockGeneration, final: FinalState
) -> Generation | None:
    """Lock the generation with `lock`, end it as `final`, settle its hold, commit.

    `lock` runs first in the transaction and returns the row locked only if it is the
    caller's to end (worker: still leased by it; reaper: lease still expired; API: the
    caller's and still active — it may raise the caller's error instead). None means
    nothing was changed. The ledger's unique (generation, kind) entries are the last line
    against settling twice."""
    async with runtime.db.transaction() as session:
        generation = await lock(session)
        if generation is None:
            return None
        stops_a_worker = (
            final.status == GenerationStatus.CANCELED
            and generation.status == GenerationStatus.PROCESSING
        )
        _apply(generation, final)
        await feed.append(session, generation.account_id, generation.id, generation.status)
        await runtime.ledger.settle(
            session,
            generation.account_id,
            generation.id,
            generation.credits_estimate,
            final.charge,
        )
        if stops_a_worker:
            await notify_canceled(session, generation.id)  # delivered when this commits
        event = f"generation.{final.status.value}"
        ended = generation
        webhooks_queued, leased = await queue_generation_event(
            session,
            account_id=generation.account_id,
            generation_id=generation.id,
            source=generation.source,
            event=event,
            body=lambda: webhook_payload(ended, event, output_url=runtime.storage.url_for),
            sender=runtime.webhook_sender,
        )
    if stops_a_worker:
        runtime.notify_canceled(generation.id)
    if webhooks_queued:
        runtime.notify_webhooks_queued(webhooks_queued if leased else ())
    if final.status == GenerationStatus.COMPLETED:
        runtime.run_times.ended()  # a new run time: read the history again soon
    observe_finished(
        generation.model,
        generation.status,
        generation.error_code,
        generation.started_at,
        generation.completed_at or utcnow(),
    )
    return generation


def _apply(generation: Generation, final: FinalState) -> None:
    generation.status = final.status.value
    generation.credits_used = final.charge
    generation.completed_at = utcnow()
    generation.lease_owner = None
    generation.lease_expires_at = None
    if final.status == GenerationStatus.CANCELED:
        generation.cancel_requested = True
    if final.outputs is not None:
        generation.outputs = final.outputs
        generation.progress = 1.0
    generation.error_code = final.error_code
    generation.error_message = final.error_message
