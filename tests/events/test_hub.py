"""The hub hands change-feed rows out in id order, and on PostgreSQL it holds back a row
whose lower neighbour is still being committed (sequence ids are taken before commit)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from tests.factories import account_with_key
from vivix.events import feed
from vivix.events.hub import EventHub, Subscription
from vivix.kit.clock import utcnow
from vivix.kit.ids import uuid7
from vivix.models import GenerationEvent
from vivix.runtime import Runtime
from vivix.worker.runner import prune_feed


async def _append(runtime: Runtime, account_id: str, generation_id: str) -> None:
    async with runtime.db.transaction() as session:
        await feed.append(session, account_id, generation_id, "processing")


async def test_rows_reach_the_subscribers_of_their_generation_and_account(
    runtime: Runtime,
) -> None:
    account = await account_with_key(runtime)
    other = await account_with_key(runtime)
    watched, unwatched = str(uuid7()), str(uuid7())
    hub = EventHub(runtime.db, poll_interval_s=60, gap_wait_s=1.0)
    runtime.db.on_events_committed.append(hub.wake)
    one = Subscription(account.id, watched)
    everything = Subscription(account.id)
    try:
        await hub.subscribe(one)
        await hub.subscribe(everything)
        await _append(runtime, account.id, watched)
        await _append(runtime, account.id, unwatched)
        await _append(runtime, other.id, str(uuid7()))
        async with asyncio.timeout(10):
            while len(everything.rows) < 2:
                await everything.wake.wait()
                everything.wake.clear()
        await asyncio.sleep(0.2)
        rows, _ = one.take()
        assert [row.generation_id for row in rows] == [watched]
        rows, _ = everything.take()
        assert [row.generation_id for row in rows] == [watched, unwatched]
        assert rows[0].id < rows[1].id
    finally:
        hub.unsubscribe(one)
        hub.unsubscribe(everything)
        await hub.close()


# SQLite commits one writer at a time: its ids have no such gaps.
@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_a_row_waits_for_a_lower_id_still_being_committed(runtime: Runtime) -> None:
    account = await account_with_key(runtime)
    hub = EventHub(runtime.db, poll_interval_s=0.05, gap_wait_s=30.0)
    watcher = Subscription(account.id)
    first_inserted = asyncio.Event()
    release_first = asyncio.Event()

    async def slow_transaction() -> None:
        async with runtime.db.transaction() as session:
            await feed.append(session, account.id, str(uuid7()), "processing")
            first_inserted.set()
            await release_first.wait()

    try:
        await _append(runtime, account.id, str(uuid7()))  # the hub starts after this one
        await hub.subscribe(watcher)
        slow = asyncio.create_task(slow_transaction())
        await first_inserted.wait()
        await _append(runtime, account.id, str(uuid7()))  # a higher id, committed first
        await asyncio.sleep(1.0)  # many polls: the committed row must not be handed out
        assert watcher.rows == []
        release_first.set()
        await slow
        async with asyncio.timeout(10):
            while len(watcher.rows) < 2:
                await watcher.wake.wait()
                watcher.wake.clear()
        ids = [row.id for row in watcher.rows]
        assert ids == sorted(ids)
        assert ids[1] == ids[0] + 1
    finally:
        release_first.set()
        hub.unsubscribe(watcher)
        await hub.close()


async def test_workers_delete_changes_older_than_the_kept_window(runtime: Runtime) -> None:
    account = await account_with_key(runtime)
    for _ in range(5):
        await _append(runtime, account.id, str(uuid7()))
    async with runtime.db.transaction() as session:
        ids = list((await session.execute(select(GenerationEvent.id).order_by("id"))).scalars())
        old = utcnow() - timedelta(hours=30)
        await session.execute(
            update(GenerationEvent).where(GenerationEvent.id.in_(ids[:3])).values(created_at=old)
        )
    assert await prune_feed(runtime, utcnow() - timedelta(hours=24), batch=2) == 3
    async with runtime.db.read() as session:
        left = list((await session.execute(select(GenerationEvent.id).order_by("id"))).scalars())
    assert left == ids[3:]


async def test_streams_that_got_the_same_change_share_one_read(runtime: Runtime) -> None:
    hub = EventHub(runtime.db, poll_interval_s=60, gap_wait_s=1.0)
    loads: list[str] = []
    release = asyncio.Event()

    async def load(value: str) -> str:
        loads.append(value)
        await release.wait()
        if value == "fails":
            raise RuntimeError("the database went away")
        return value

    waiting = [asyncio.ensure_future(hub.shared(("g", 7), lambda: load("at 7"))) for _ in range(50)]
    later = asyncio.ensure_future(hub.shared(("g", 8), lambda: load("at 8")))
    await asyncio.sleep(0)
    release.set()
    assert set(await asyncio.gather(*waiting)) == {"at 7"}
    assert await later == "at 8"
    assert loads == ["at 7", "at 8"]  # one read per change, not one per stream
    with pytest.raises(RuntimeError):
        await hub.shared(("g", 9), lambda: load("fails"))
    assert await hub.shared(("g", 9), lambda: load("at 9")) == "at 9"  # a failure is not kept
    assert loads == ["at 7", "at 8", "fails", "at 9"]
    await hub.close()
