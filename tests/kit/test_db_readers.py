"""The hot reads on the bare driver (`Database.reader()`: asyncpg on PostgreSQL, SQLite on
the event loop) return exactly the rows SQLAlchemy's own execution path returns for the
same statement, and a SQLite read that would wait for a lock does not block the loop."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Row, bindparam, column, select, table, update
from sqlalchemy.engine import make_url

from tests.factories import AccountWithKey, account_with_key
from vivix.accounts import repository as accounts_repository
from vivix.accounts.service import hash_key
from vivix.generations import repository as generations_repository
from vivix.kit.db import AsyncpgReader, Database, SqliteLoopReader
from vivix.models import ApiKey, Generation
from vivix.runtime import Runtime

T = table("t", column("id"), column("name"))
IMAGE = {"model": "vivix-local-image", "prompt": "a lighthouse in fog"}


@pytest.fixture
async def acct(runtime: Runtime) -> AccountWithKey:
    return await account_with_key(runtime, calls_per_minute=100_000, concurrent_jobs=1000)


async def submit(client: httpx.AsyncClient, acct: AccountWithKey, **body: Any) -> str:
    response = await client.post("/api/v1/generate", json={**IMAGE, **body}, headers=acct.headers)
    assert response.status_code == 201, response.text
    generation_id: str = response.json()["generation_id"]
    return generation_id


def assert_same_row(driver: Row[Any] | None, sqlalchemy: Row[Any] | None) -> None:
    assert (driver is None) == (sqlalchemy is None)
    if driver is None or sqlalchemy is None:
        return
    assert driver._fields == sqlalchemy._fields
    assert driver == sqlalchemy
    for field, got, expected in zip(driver._fields, driver, sqlalchemy, strict=True):
        assert type(got) is type(expected), field
        if isinstance(expected, datetime):
            assert got.utcoffset() == expected.utcoffset() == timedelta(0), field


async def both_ways(runtime: Runtime, key_hash: str, generation_id: str | None) -> Row[Any] | None:
    async with runtime.db.reader() as reader:
        assert isinstance(reader, SqliteLoopReader | AsyncpgReader)
        driver = await generations_repository.read_with_caller(reader, key_hash, generation_id)
        caller = await accounts_repository.get_caller(reader, key_hash)
    async with runtime.db.autocommit() as connection:
        expected = await generations_repository.read_with_caller(
            connection, key_hash, generation_id
        )
        expected_caller = await accounts_repository.get_caller(connection, key_hash)
    assert_same_row(driver, expected)
    assert_same_row(caller, expected_caller)
    return driver


async def test_driver_reads_return_what_sqlalchemy_returns(
    runtime: Runtime, client: httpx.AsyncClient, acct: AccountWithKey
) -> None:
    key_hash = hash_key(runtime.secret, acct.key)
    pending = await submit(client, acct, metadata={"order": "17"})
    done = await submit(client, acct, seed=7)
    now = datetime.now(UTC).replace(microsecond=123456)
    async with runtime.db.transaction() as session:
        await session.execute(
            update(Generation)
            .where(Generation.id == done)
            .values(
                status="completed",
                started_at=now - timedelta(seconds=3),
                completed_at=now,
                progress=1.0,
                credits_used=4,
                outputs=[{"key": "a/b.png", "content_type": "image/png", "bytes": 10}],
                expired_at=now,
            )
        )
        await session.execute(update(ApiKey).values(last_used_at=now))

    row = await both_ways(runtime, key_hash, pending)
    assert row is not None
    assert row.queue_position == 1
    assert row.metadata_ == {"order": "17"}
    row = await both_ways(runtime, key_hash, done)
    assert row is not None
    assert row.queue_position is None
    assert row.completed_at == now
    assert row.outputs == [{"key": "a/b.png", "content_type": "image/png", "bytes": 10}]
    assert row.last_used_at == now

    # Someone else's generation, no generation, an unknown key.
    other = await account_with_key(runtime)
    row = await both_ways(runtime, hash_key(runtime.secret, other.key), done)
    assert row is not None
    assert row.id is None
    assert (await both_ways(runtime, key_hash, None)) is not None
    assert (await both_ways(runtime, "0" * 64, done)) is None


async def test_driver_read_sees_a_revocation_at_once(
    runtime: Runtime, client: httpx.AsyncClient, acct: AccountWithKey
) -> None:
    generation_id = await submit(client, acct)
    response = await client.get(f"/api/v1/generations/{generation_id}", headers=acct.headers)
    assert response.status_code == 200
    async with runtime.db.transaction() as session:
        await session.execute(update(ApiKey).values(revoked_at=datetime.now(UTC)))
    response = await client.get(f"/api/v1/generations/{generation_id}", headers=acct.headers)
    assert response.status_code == 401


async def test_sqlite_read_that_would_wait_for_a_lock_leaves_the_loop_free(
    tmp_path: Path,
) -> None:
    path = tmp_path / "locked.db"
    with sqlite3.connect(path) as setup:  # rollback journal: a writer keeps readers out
        setup.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)")
        setup.execute("INSERT INTO t VALUES (1, 'one')")
    setup.close()
    db = Database(f"sqlite+aiosqlite:///{path}")
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN EXCLUSIVE")
    released = threading.Timer(0.5, blocker.rollback)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        released.start()
        async with db.reader() as reader:
            assert isinstance(reader, SqliteLoopReader)
            row = (
                await reader.execute(select(T).where(T.c.id == bindparam("id")), {"id": 1})
            ).first()
        assert row is not None
        assert tuple(row) == (1, "one")
        assert ticks >= 10  # the loop ran while the read waited for the lock
    finally:
        ticker.cancel()
        released.join()
        blocker.close()
        await db.dispose()


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)  # PostgreSQL's NOTIFY
async def test_notify_on_the_driver_pool_is_heard_by_a_listener(runtime: Runtime) -> None:
    import asyncpg

    url = make_url(runtime.db.url).set(drivername="postgresql")
    listener = await asyncpg.connect(url.render_as_string(hide_password=False))
    heard = asyncio.Event()
    try:
        await listener.add_listener("vivix_test_wakeup", lambda *_: heard.set())
        await runtime.db.notify("vivix_test_wakeup")
        await asyncio.wait_for(heard.wait(), 5)
    finally:
        await listener.close()


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)  # a PostgreSQL URL option
async def test_driver_reads_without_prepared_statements_for_pgbouncer(
    runtime: Runtime, acct: AccountWithKey
) -> None:
    url = make_url(runtime.db.url).update_query_dict({"prepared_statement_cache_size": "0"})
    db = Database(url.render_as_string(hide_password=False))
    key_hash = hash_key(runtime.secret, acct.key)
    try:
        for _ in range(2):
            async with db.reader() as reader:
                assert isinstance(reader, AsyncpgReader)
                row = await accounts_repository.get_caller(reader, key_hash)
            assert row is not None
            assert row.account_id == acct.id
    finally:
        await db.dispose()
