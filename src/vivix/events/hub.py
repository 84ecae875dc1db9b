"""Fanning change-feed rows out to this process's event streams.

One hub per API process reads new `generation_events` rows (one query per wake-up, for
every stream) and hands each to the streams subscribed to its generation or account. It
wakes when a transaction of this process appends rows (`Database.on_events_committed`),
on PostgreSQL when another process NOTIFYs (one LISTEN connection per process, not one
per stream), and every `poll_interval_s` while streams are open (SQLite shared by
several processes has no notifications).

Rows are handed out strictly in id order. On PostgreSQL ids are taken from a sequence
before commit, so a transaction can commit a lower id after a higher one is visible: the
hub waits (up to `gap_wait_s`, then skips: a rolled-back id never appears) for a missing
id before passing it. A stream's ids therefore only grow, and resuming after one misses
nothing. SQLite commits one writer at a time, so its ids have no such gaps. (Known
limit: when the first stream of a process subscribes, a lower id still committing at
that instant is not waited for: the hub starts after the newest visible id.)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

import structlog
from sqlalchemy import Row

from vivix.events import repository
from vivix.events.feed import GENERATION
from vivix.kit.db import Database
from vivix.kit.wakeup import EVENTS_CHANNEL, JOBS_CHANNEL, ChannelListener

log = structlog.get_logger(__name__)
T = TypeVar("T")

BATCH = 500
# A stream that falls this far behind drops its buffer and reads the feed itself.
MAX_BUFFERED = 256
GAP_RETRY_S = 0.02


class Subscription:
    """One open stream's mailbox: rows of its generation (or account), and the id of the
    latest change that moved the queue while it watches a queue position."""

    __slots__ = ("account_id", "generation_id", "overflowed", "queue_moved", "rows", "wake")

    def __init__(self, account_id: str, generation_id: str | None = None) -> None:
        self.account_id = account_id
        self.generation_id = generation_id
        self.rows: list[Row[Any]] = []
        self.overflowed = False
        self.queue_moved = 0
        self.wake = asyncio.Event()

    def push(self, row: Row[Any]) -> None:
        if len(self.rows) >= MAX_BUFFERED:
            self.rows.clear()
            self.overflowed = True
        elif not self.overflowed:
            self.rows.append(row)
        self.wake.set()

    def moved(self, event_id: int) -> None:
        self.queue_moved = event_id
        self.wake.set()

    def take(self) -> tuple[list[Row[Any]], bool]:
        """The buffered rows, and whether some were dropped (then read the feed)."""
        rows, overflowed = self.rows, self.overflowed
        self.rows, self.overflowed = [], False
        self.wake.clear()
        return rows, overflowed


class EventHub:
    def __init__(
        self,
        db: Database,
        *,
        poll_interval_s: float,
        gap_wait_s: float,
        listen_url: str | None = None,
    ) -> None:
        self._db = db
        self._poll_interval_s = poll_interval_s
        self._gap_wait_s = gap_wait_s
        self._listen_url = listen_url
        self._by_generation: dict[str, set[Subscription]] = {}
        self._by_account: dict[str, set[Subscription]] = {}
        self._queue_watchers: set[Subscription] = set()
        self._count = 0
        self._cursor: int | None = None
        self._gap_since: float | None = None
        self._trust_next = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listener: ChannelListener | None = None
        self._reads: dict[Hashable, asyncio.Future[Any]] = {}  # reads under way

    def wake(self) -> None:
        self._wake.set()

    @property
    def streams(self) -> int:
        return self._count

    @property
    def position(self) -> int | None:
        """Every row up to this id has been handed out (None: no stream open)."""
        return self._cursor

    async def subscribe(self, subscription: Subscription) -> None:
        """Register before reading the stream's starting state: every row committed after
        that read reaches the subscription (rows it already saw are dropped by id)."""
        self._start()
        if self._cursor is None:
            async with self._db.autocommit() as connection:
                latest = await repository.last_id(connection)
            if self._cursor is None:
                self._cursor = latest
                # An empty feed: the ids before the first row are nobody's to wait for.
                self._trust_next = latest == 0
        if subscription.generation_id is not None:
            self._by_generation.setdefault(subscription.generation_id, set()).add(subscription)
        else:
            self._by_account.setdefault(subscription.account_id, set()).add(subscription)
        self._count += 1

    def unsubscribe(self, subscription: Subscription) -> None:
        key, index = (
            (subscription.generation_id, self._by_generation)
            if subscription.generation_id is not None
            else (subscription.account_id, self._by_account)
        )
        subscribers = index.get(key)
        if subscribers is None or subscription not in subscribers:
            return
        subscribers.discard(subscription)
        if not subscribers:
            del index[key]
        self._queue_watchers.discard(subscription)
        self._count -= 1
        if self._count == 0:
            self._cursor = None  # nobody listens: stop reading until the next stream
            self._gap_since = None

    def watch_queue(self, subscription: Subscription, watching: bool) -> None:
        """While its generation is pending, a stream hears of every status change (any
        of them can move its queue position)."""
        if watching:
            self._queue_watchers.add(subscription)
        else:
            self._queue_watchers.discard(subscription)

    async def shared(self, key: Hashable, read: Callable[[], Awaitable[T]]) -> T:
        """`read()`, or the result of the same read already under way: one change seen by
        many streams (an account's) costs one query, and no result outlives its read. The
        read runs as its own task: a stream that goes away doesn't take it from others."""
        task = self._reads.get(key)
        if task is None:
            task = asyncio.ensure_future(read())
            self._reads[key] = task
            task.add_done_callback(lambda _done: self._reads.pop(key, None))
        result: T = await asyncio.shield(task)
        return result

    def _start(self) -> None:
        if self._task is not None:
            return
        self._task = asyncio.create_task(self._run(), name="vivix-event-hub")
        if self._listen_url is not None:
            # Submits already NOTIFY the jobs channel; other changes the events channel.
            channels: dict[str, Callable[[str], None]] = {
                EVENTS_CHANNEL: self._on_notify,
                JOBS_CHANNEL: self._on_notify,
            }
            self._listener = ChannelListener(self._listen_url, channels, [self.wake])
            self._listener.start()

    def _on_notify(self, _payload: str) -> None:
        self._wake.set()

    async def _run(self) -> None:
        timeout = self._poll_interval_s
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            timeout = self._poll_interval_s
            if self._cursor is None:
                continue
            try:
                if await self._read():
                    timeout = GAP_RETRY_S
            except Exception as exc:
                log.warning("event_hub_read_failed", error=repr(exc))

    async def _read(self) -> bool:
        """Hand out every new row in id order; True when waiting for a missing id."""
        while self._cursor is not None:
            cursor = self._cursor
            async with self._db.autocommit() as connection:
                rows = await repository.after(connection, cursor, BATCH)
            for row in rows:
                if self._trust_next:
                    self._trust_next = False
                elif row.id != cursor + 1 and not self._db.is_sqlite:
                    now = time.monotonic()
                    if self._gap_since is None:
                        self._gap_since = now
                    if now - self._gap_since < self._gap_wait_s:
                        self._cursor = cursor
                        return True
                self._gap_since = None
                cursor = row.id
                self._dispatch(row)
            if self._cursor is None:  # the last stream left meanwhile
                return False
            self._cursor = cursor
            if len(rows) < BATCH:
                return False
        return False

    def _dispatch(self, row: Row[Any]) -> None:
        for subscription in self._by_generation.get(row.generation_id, ()):
            subscription.push(row)
        for subscription in self._by_account.get(row.account_id, ()):
            subscription.push(row)
        if row.kind == GENERATION:
            for subscription in self._queue_watchers:
                subscription.moved(row.id)

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
