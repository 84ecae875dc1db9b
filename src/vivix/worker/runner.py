"""The worker: claims generations and runs up to `concurrency` of them at once.

Each running job has a heartbeat that renews its lease; a lost lease (reaped, or the
client canceled) cancels the job, which stops the render and asks the upstream to stop.
A job whose code raised gives its lease back at once, its error recorded. Every worker
also reaps expired leases (a worker that died), each in its own transaction. Either way
the job goes back to `pending` after a jittered exponential backoff (`run_after`), or,
once `max_attempts` is used up, fails with a refund and its upstream job is canceled.
Every attempt's error is kept on the generation for operators.

The worker also sends webhook deliveries (`webhooks.sender`), woken the same ways.

Shutdown (SIGTERM): stop claiming, give running jobs `shutdown_grace_seconds` to finish,
then release the rest to `pending` (attempt not counted) so another worker resumes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from vivix.events import feed
from vivix.events import repository as events_repository
from vivix.generations.finish import FinalState, LockGeneration, commit_final_state
from vivix.kit import tracing
from vivix.kit.clock import utcnow
from vivix.kit.egress import GuardedFetcher
from vivix.kit.ids import base62
from vivix.kit.logging import bind_job
from vivix.kit.metrics import observe_queue_wait
from vivix.kit.wakeup import PostgresListener
from vivix.models import Generation, GenerationStatus
from vivix.operations import retention
from vivix.providers.registry import ProviderRegistry, build_registry
from vivix.webhooks.sender import WebhookSender
from vivix.worker import repository
from vivix.worker.service import (
    PUBLIC_MESSAGES,
    JobExecutor,
    LeaseLost,
    is_intent_only,
    note_attempt_error,
)

if TYPE_CHECKING:
    from vivix.runtime import Runtime

log = structlog.get_logger(__name__)


class Worker:
    def __init__(
        self,
        runtime: Runtime,
        *,
        concurrency: int | None = None,
        registry: ProviderRegistry | None = None,
        owner: str | None = None,
    ) -> None:
        self.runtime = runtime
        settings = runtime.settings.worker
        self.concurrency = concurrency or settings.concurrency
        self.lease = timedelta(seconds=settings.lease_seconds)
        self.owner = owner or f"{socket.gethostname()[:30]}:{os.getpid()}:{base62(8)}"
        self._owns_registry = registry is None
        self.registry = registry or build_registry(runtime.settings)
        fetch = runtime.settings.fetch
        self.fetcher = GuardedFetcher(
            resolver=runtime.resolver,
            max_bytes=fetch.max_bytes,
            timeout_s=fetch.timeout_seconds,
            allow_private_hosts=frozenset(fetch.allow_private_hosts),
        )
        self.executor = JobExecutor(runtime, self.registry, self.owner, self.fetcher)
        self.webhooks = WebhookSender(runtime, self.owner)
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._canceled: set[str] = set()
        self._listener: PostgresListener | None = None
        self._main: asyncio.Task[None] | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._retention: asyncio.Task[None] | None = None
        self._feed: asyncio.Task[None] | None = None
        self.claimed = 0

    # -- signals -------------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    async def wake_async(self) -> None:
        self._wake.set()

    def cancel_job(self, generation_id: str) -> None:
        """Stop a running job. Once: the in-process signal, the NOTIFY and the heartbeat may
        all report the same cancel, and a second cancel would interrupt the cleanup (waiting
        for the render to stop, asking the upstream to stop) of the first."""
        task = self._running.get(generation_id)
        if task is not None and generation_id not in self._canceled:
            self._canceled.add(generation_id)
            task.cancel()

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        if not self.runtime.db.is_sqlite:
            self._listener = PostgresListener(
                self.runtime.settings.resolved_database_url,
                self.wake,
                self.cancel_job,
                on_webhooks=self.webhooks.wake,
            )
            self._listener.start()
        await self.webhooks.start()
        self.runtime.on_enqueued.append(self.wake_async)
        self.runtime.on_canceled.append(self.cancel_job)
        self._main = asyncio.create_task(self._claim_loop(), name="vivix-worker")
        self._reaper = asyncio.create_task(self._reap_loop(), name="vivix-reaper")
        if retention.enabled(self.runtime.settings.retention):
            self._retention = asyncio.create_task(self._retention_loop(), name="vivix-retention")
        self._feed = asyncio.create_task(self._feed_loop(), name="vivix-feed-prune")

    async def stop(self, grace_s: float | None = None) -> None:
        grace = self.runtime.settings.worker.shutdown_grace_seconds if grace_s is None else grace_s
        self._stopping.set()
        self._wake.set()
        for task in (self._main, self._reaper, self._retention, self._feed):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._running:
            log.info("worker_draining", running=len(self._running), grace_s=grace)
            await asyncio.wait(list(self._running.values()), timeout=grace)
        leftovers = dict(self._running)
        for generation_id, task in leftovers.items():
            if generation_id not in self._canceled:  # those are already winding down
                task.cancel()
        if leftovers:
            await asyncio.gather(*leftovers.values(), return_exceptions=True)
            await self._release(list(leftovers))
        await self.webhooks.stop()
        if self._listener is not None:
            await self._listener.stop()
        if self.wake_async in self.runtime.on_enqueued:
            self.runtime.on_enqueued.remove(self.wake_async)
        if self.cancel_job in self.runtime.on_canceled:
            self.runtime.on_canceled.remove(self.cancel_job)
        await self.fetcher.aclose()
        if self._owns_registry:
            await self.registry.aclose()

    async def run_until_stopped(self) -> None:
        await self.start()
        await self._stopping.wait()

    def request_stop(self) -> None:
        self._stopping.set()

    # -- loops ---------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        poll = self.runtime.settings.worker.poll_interval_seconds
        while not self._stopping.is_set():
            self._wake.clear()
            while len(self._running) < self.concurrency and not self._stopping.is_set():
                try:
                    generation = await self._claim()
                except Exception as exc:
                    log.warning("claim_failed", error=repr(exc))
                    generation = None
                if generation is None:
                    break
                self._spawn(generation)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=poll)

    async def _claim(self) -> Generation | None:
        now = utcnow()
        async with self.runtime.db.transaction() as session:
            generation = await repository.claim_next_generation(
                session, self.owner, now, self.lease
            )
        if generation is not None:
            self.claimed += 1
            if generation.attempts == 1:  # the first claim ends its wait in the queue
                observe_queue_wait(generation.model, generation.created_at, now)
        return generation

    def _spawn(self, generation: Generation) -> None:
        task = asyncio.create_task(self._run_job(generation), name=f"job-{generation.id}")
        self._running[generation.id] = task

    async def _run_job(self, generation: Generation) -> None:
        # This task's log lines (and its heartbeat's, a task made from this context) carry
        # the job's ids; its own task, so no other job sees them.
        bind_job(generation.request_id, generation.account_id, generation.id)
        heartbeat = asyncio.create_task(self._heartbeat(generation.id))
        try:
            with tracing.span(
                f"job {generation.model}",
                kind="CONSUMER",
                traceparent=generation.traceparent,
                attributes=_job_attributes(generation, self.owner),
            ):
                await self.executor.run(generation)
        except LeaseLost:
            log.info("lease_lost", generation_id=generation.id)
        except asyncio.CancelledError:
            if generation.id not in self._canceled:
                raise  # shutdown: released afterwards, the next worker resumes the upstream job
            # Canceled by the client or a lost lease: the render has stopped (local); stop
            # the upstream job too unless another worker now owns it and will resume it.
            if await self.executor.is_abandoned(generation.id):
                await self.executor._cancel_upstream(generation)
        except Exception as exc:
            # A bug or a broken dependency (store, database): give the lease back now with
            # the error recorded, instead of letting it expire. The log carries a plain
            # traceback, no local variables (the job's prompt, credentials).
            log.error("job_crashed", generation_id=generation.id, exc_info=exc)
            await self._release_crashed(generation.id, f"{type(exc).__name__}: {exc}")
        finally:
            heartbeat.cancel()
            self._running.pop(generation.id, None)
            self._canceled.discard(generation.id)
            self._wake.set()  # a slot is free

    async def _release_crashed(self, generation_id: str, error: str) -> None:
        async def lock(session: AsyncSession) -> Generation | None:
            return await repository.lock_leased_generation(session, generation_id, self.owner)

        try:
            abandoned = await end_attempt(self.runtime, lock, self.owner, error)
        except Exception as exc:  # the database itself is failing: the lease will expire
            log.warning("crash_release_failed", generation_id=generation_id, error=repr(exc))
            return
        if abandoned is not None:
            await self.cancel_abandoned(abandoned)

    async def cancel_abandoned(self, abandoned: AbandonedJob) -> None:
        """Stop the upstream job of a generation no worker will resume."""
        adapter = self.registry.get(abandoned.provider)
        if adapter is None:
            return
        try:
            await adapter.cancel(abandoned.handle)
        except Exception as exc:
            log.warning(
                "upstream_cancel_failed", generation_id=abandoned.generation_id, error=repr(exc)
            )

    async def _heartbeat(self, generation_id: str) -> None:
        every = self.runtime.settings.worker.heartbeat_seconds
        while True:
            await asyncio.sleep(every)
            try:
                async with self.runtime.db.transaction() as session:
                    ours = await repository.extend_lease(
                        session, generation_id, self.owner, utcnow() + self.lease
                    )
            except Exception as exc:
                log.warning("heartbeat_failed", generation_id=generation_id, error=repr(exc))
                continue
            if not ours:
                self.cancel_job(generation_id)
                return

    async def _reap_loop(self) -> None:
        every = max(1.0, self.runtime.settings.worker.lease_seconds / 3)
        while True:
            try:
                await reap_expired_leases(self.runtime, self.cancel_abandoned)
            except Exception as exc:
                log.warning("reap_failed", error=repr(exc))
            await asyncio.sleep(every * (0.75 + random.random() / 2))

    async def _retention_loop(self) -> None:
        """Delete outputs and erase records past their retention (every worker runs it;
        rows another worker is on are skipped)."""
        every = self.runtime.settings.retention.sweep_interval_seconds
        while True:
            await asyncio.sleep(every * (0.75 + random.random() / 2))
            try:
                await retention.prune(self.runtime)
            except Exception as exc:
                log.warning("retention_failed", error=repr(exc))

    async def _feed_loop(self) -> None:
        """Delete change-feed rows older than `events.keep_hours` (streams resume only
        from recent ones)."""
        every = self.runtime.settings.retention.sweep_interval_seconds
        keep = timedelta(hours=self.runtime.settings.events.keep_hours)
        while True:
            await asyncio.sleep(every * (0.75 + random.random() / 2))
            try:
                await prune_feed(self.runtime, utcnow() - keep)
            except Exception as exc:
                log.warning("feed_prune_failed", error=repr(exc))

    async def _release(self, generation_ids: list[str]) -> None:
        """Hand unfinished jobs back to the queue without spending an attempt."""
        async with self.runtime.db.transaction() as session:
            for generation_id in generation_ids:
                locked = await repository.lock_leased_generation(session, generation_id, self.owner)
                if locked is None:
                    continue
                locked.status = GenerationStatus.PENDING.value
                locked.lease_owner = None
                locked.lease_expires_at = None
                locked.attempts = max(0, locked.attempts - 1)
                locked.run_after = utcnow()
                await feed.append(session, locked.account_id, locked.id, locked.status)
        log.info("worker_released_jobs", count=len(generation_ids))


async def prune_feed(runtime: Runtime, cutoff: datetime, batch: int = 1000) -> int:
    """Delete every change-feed row created before `cutoff`, a batch per transaction."""
    deleted = 0
    while True:
        async with runtime.db.write_connection() as connection:
            count = await events_repository.prune_before(connection, cutoff, batch)
        deleted += count
        if count < batch:
            return deleted


@dataclass(frozen=True, slots=True)
class AbandonedJob:
    """An upstream job whose generation has ended: nobody will collect its result."""

    generation_id: str
    provider: str
    handle: dict[str, Any]


def retry_delay(attempt: int, base_s: float, cap_s: float = 300.0) -> float:
    """Exponential backoff with equal jitter (half fixed, half random): jobs that failed
    together (a provider or database outage) don't come back in step."""
    ceiling = min(cap_s, base_s * 2.0 ** max(0, attempt - 1))
    return ceiling * (0.5 + random.random() / 2)


async def end_attempt(
    runtime: Runtime, lock: LockGeneration, worker: str, error: str
) -> AbandonedJob | None:
    """An attempt that ended without a result: its code raised, or its worker died (lease
    expired). The error is kept on the generation and, in the same transaction, it goes
    back to the queue after a jittered backoff. Attempts used up (or canceled meanwhile),
    it ends instead — failed or canceled with a full refund, through `commit_final_state`
    — and its upstream job is returned for cancelling. `lock` returns the row locked only
    while it is the caller's to end (leased by the worker; lease still expired)."""
    settings = runtime.settings.worker
    async with runtime.db.transaction() as session:
        generation = await lock(session)
        if generation is None:
            return None
        note_attempt_error(generation, worker, error)
        if generation.cancel_requested:
            final = FinalState.canceled()
        elif generation.attempts >= settings.max_attempts:
            final = FinalState.failed("INTERNAL_ERROR", PUBLIC_MESSAGES["INTERNAL_ERROR"])
        else:
            delay = retry_delay(generation.attempts, settings.retry_backoff_seconds)
            generation.status = GenerationStatus.PENDING.value
            generation.lease_owner = None
            generation.lease_expires_at = None
            generation.run_after = utcnow() + timedelta(seconds=delay)
            await feed.append(session, generation.account_id, generation.id, generation.status)
            return None
    # The note is committed; the ending is its own transaction (the lock checks again).
    ended = await commit_final_state(runtime, lock, final)
    handle = ended.upstream_handle if ended is not None else None
    if ended is None or not handle or not ended.provider or is_intent_only(handle):
        return None
    return AbandonedJob(ended.id, ended.provider, dict(handle))


async def reap_expired_leases(
    runtime: Runtime,
    on_abandoned: Callable[[AbandonedJob], Awaitable[None]] | None = None,
) -> int:
    """Return expired leases to the queue (with backoff) or fail + refund them, each in
    its own transaction: one lease that can't be settled doesn't hold up the rest, and
    a row locked by another reaper is skipped, not waited for."""
    now = utcnow()
    async with runtime.db.read() as session:
        expired = await repository.expired_lease_ids(session, now)
    reaped = 0
    for generation_id, owner in expired:
        error = (
            f"lease expired: worker {owner} stopped renewing it "
            "(it died or lost its database connection)"
        )
        try:
            abandoned = await end_attempt(
                runtime, _lock_expired(generation_id, now), "reaper", error
            )
        except Exception as exc:
            log.warning("reap_failed", generation_id=generation_id, error=repr(exc))
            continue
        reaped += 1
        if abandoned is not None and on_abandoned is not None:
            await on_abandoned(abandoned)
    if reaped:
        log.info("reaped_expired_leases", count=reaped)
    return reaped


def _lock_expired(generation_id: str, now: datetime) -> LockGeneration:
    async def lock(session: AsyncSession) -> Generation | None:
        return await repository.lock_expired_lease(session, generation_id, now)

    return lock


def _job_attributes(generation: Generation, owner: str) -> dict[str, str | int]:
    return {
        "vivix.generation_id": generation.id,
        "vivix.account_id": generation.account_id,
        "vivix.model": generation.model,
        "vivix.attempt": generation.attempts,
        "vivix.worker": owner,
    }
