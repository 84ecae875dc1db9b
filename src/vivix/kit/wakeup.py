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
EVENTS_CHANNEL = "vivix_events"  # change-feed rows committed (event streams)


class JobsNotifier:
    """`NOTIFY vivix_jobs` after submits commit, coalesced: while one is on its way, any
    number of further pokes fold into one more. Idle workers only need to hear that there
    is work (they claim until the queue is empty), and a NOTIFY inside the admission
    transaction would cost a round trip while the account row is locked, and PostgreSQL
    serializes the commits of notifying transactions. If a NOTIFY fails, workers still
    find the job by polling."""

    def __init__(self, db: Database, channel: str = JOBS_CHANNEL) -> None:
        self._db = db
        self._channel = channel
        self._sending = False
        self._again = False
        self._task: asyncio.Task[None] | None = None

    def poke(self) -> None:
        if self._sending:
            self._again = True
            return
        self._sending = True
        self._task = asyncio.create_task(self._send(), name=f"{self._channel}-notify")

    async def _send(self) -> None:
        try:
            while True:
                self._again = False
                await self._db.notify(self._channel)
                if not self._again:
                    return
        except Exception as exc:
            log.warning("notify_failed", channel=self._channel, error=repr(exc))
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
        channels: dict[str, Callable[[str], None]] = {
            JOBS_CHANNEL: lambda _payload: on_job(),
            CANCEL_CHANNEL: on_cancel,
        }
        catch_up = [on_job]  # anything enqueued while we weren't listening
        if on_webhooks is not None:
            channels[WEBHOOKS_CHANNEL] = lambda _payload: on_webhooks()
            catch_up.append(on_webhooks)
        self._listener = ChannelListener(database_url, channels, catch_up)
        self.connected = self._listener.connected

    def start(self) -> None:
        self._listener.start()

    async def stop(self) -> None:
        await self._listener.stop()


class ChannelListener:
    """A dedicated asyncpg connection LISTENing on `channels` (name → callback taking the
    payload); `catch_up` callbacks run on every (re)connect, for what was sent while
    nobody listened. Reconnects on loss."""

    def __init__(
        self,
        database_url: str,
        channels: dict[str, Callable[[str], None]],
        catch_up: list[Callable[[], None]],
    ) -> None:
        url = make_url(database_url).set(drivername="postgresql")
        self._dsn = url.render_as_string(hide_password=False)
        self._channels = channels
        self._catch_up = catch_up
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="vivix-pg-channels")

    async def _run(self) -> None:
        import asyncpg

        while True:
            connection = None
            try:
                connection = await asyncpg.connect(self._dsn)
                for channel, callback in self._channels.items():
                    await connection.add_listener(
                        channel, lambda _c, _p, _ch, payload, call=callback: call(str(payload))
                    )
                self.connected.set()
                for catch_up in self._catch_up:
                    catch_up()
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
