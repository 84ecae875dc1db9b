"""Waking idle workers when work appears, and running jobs when they are canceled.

In-process: `Signals` are plain asyncio primitives the API calls after its transaction
commits (embedded worker). Across processes on PostgreSQL: `NOTIFY` sent after a submit
commits (coalesced by `JobsNotifier`) or inside the canceling transaction (delivered by
PostgreSQL only once it commits), and a `LISTEN` connection per worker. SQLite across
processes has no notification channel: workers fall back to polling
(`worker.poll_interval_seconds`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from vivix.kit.db import Database

log = structlog.get_logger(__name__)

JOBS_CHANNEL = "vivix_jobs"
CANCEL_CHANNEL = "vivix_cancel"
WEBHOOKS_CHANNEL = "vivix_webhooks"


class JobsNotifier:
    """`NOTIFY vivix_jobs` after submits commit, coalesced: while one is on its way, any
    number of further pokes fold into one more. Idle workers only need to hear that there
    is work (they claim until the queue is empty), and a NOTIFY inside the admission
    transaction would cost a round trip while the account row is locked, and PostgreSQL
    serializes the commits of notifying transactions. If a NOTIFY fails, workers still
    find the job by polling."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._sending = False
        self._again = False
        self._task: asyncio.Task[None] | None = None

    def poke(self) -> None:
        if self._sending:
            self._again = True
            return
        self._sending = True
        self._task = asyncio.create_task(self._send(), name="vivix-jobs-notify")

    async def _send(self) -> None:
        try:
            while True:
                self._again = False
                async with self._db.autocommit() as connection:
                    await connection.execute(text(f"NOTIFY {JOBS_CHANNEL}"))
                if not self._again:
                    return
        except Exception as exc:
            log.warning("jobs_notify_failed", error=repr(exc))
        finally:
            self._sending = False

    async def close(self) -> None:
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task


async def notify_canceled(session: AsyncSession, generation_id: str) -> None:
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(
            text("SELECT pg_notify(:channel, :payload)"),
            {"channel": CANCEL_CHANNEL, "payload": generation_id},
        )


async def notify_webhooks_queued(session: AsyncSession) -> None:
    """Inside the transaction that queues webhook deliveries: workers of other processes
    hear it when (and only if) it commits. Deliveries are sent only by workers, and the
    NOTIFY is what makes a completion reach its receiver in milliseconds, not a poll."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(text(f"NOTIFY {WEBHOOKS_CHANNEL}"))


class PostgresListener:
    """A dedicated asyncpg connection LISTENing on the jobs and cancel channels (and the
    webhooks channel when `on_webhooks` is given); reconnects on loss."""

    def __init__(
        self,
        database_url: str,
        on_job: Callable[[], None],
        on_cancel: Callable[[str], None],
        on_webhooks: Callable[[], None] | None = None,
    ) -> None:
        url = make_url(database_url).set(drivername="postgresql")
        self._dsn = url.render_as_string(hide_password=False)
        self._on_job = on_job
        self._on_cancel = on_cancel
        self._on_webhooks = on_webhooks
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="vivix-pg-listener")

    async def _run(self) -> None:
        import asyncpg

        while True:
            connection = None
            try:
                connection = await asyncpg.connect(self._dsn)
                await connection.add_listener(JOBS_CHANNEL, lambda *_: self._on_job())
                await connection.add_listener(
                    CANCEL_CHANNEL, lambda _c, _p, _ch, payload: self._on_cancel(str(payload))
                )
                on_webhooks = self._on_webhooks
                if on_webhooks is not None:
                    await connection.add_listener(
                        WEBHOOKS_CHANNEL, lambda *_, wake=on_webhooks: wake()
                    )
                self.connected.set()
                self._on_job()  # catch up on anything enqueued while we weren't listening
                if on_webhooks is not None:
                    on_webhooks()
                lost = asyncio.Event()
                connection.add_termination_listener(lambda *_, event=lost: event.set())
                await lost.wait()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("pg_listener_disconnected", error=repr(exc))
            finally:
                self.connected.clear()
                if connection is not None and not connection.is_closed():
                    await connection.close()
            await asyncio.sleep(1.0)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
