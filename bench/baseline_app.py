"""The bare baseline bench_api measures Vivix against: the least an HTTP service can do
for the same two calls, sharing none of Vivix's plumbing.

- POST /rows: one INSERT of a generation-like row, committed (autocommit: the INSERT is
  its own transaction), a small JSON answer.
- GET /rows/{id}: one primary-key SELECT of such a row, the row as JSON.

Plain Starlette on the same uvicorn settings `vivix serve` uses, and the database driver
used directly: aiosqlite (SQLite, the same WAL / synchronous=NORMAL pragmas Vivix sets)
or an asyncpg pool (PostgreSQL). No SQLAlchemy and no `vivix` import, so every ratio
against it includes the cost of Vivix's own database layer.

Run: python -m bench.baseline_app --database-url URL --port PORT
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bench.common import uvicorn_settings

ACCOUNT_ID = "00000000-0000-4000-8000-000000000001"
# As many as Vivix (pool_size 30, no overflow).
POSTGRES_POOL = 30
SQLITE_READERS = 4
BUSY_TIMEOUT_MS = 30_000

_SQLITE_TABLE = """CREATE TABLE IF NOT EXISTS bench_baseline_rows (
    id VARCHAR(36) PRIMARY KEY, account_id VARCHAR(36) NOT NULL, model VARCHAR(100) NOT NULL,
    status VARCHAR(16) NOT NULL, params JSON NOT NULL, credits_estimate INTEGER NOT NULL,
    attempts INTEGER NOT NULL, created_at DATETIME NOT NULL, run_after DATETIME NOT NULL)"""
_POSTGRES_TABLE = """CREATE TABLE IF NOT EXISTS bench_baseline_rows (
    id VARCHAR(36) PRIMARY KEY, account_id VARCHAR(36) NOT NULL, model VARCHAR(100) NOT NULL,
    status VARCHAR(16) NOT NULL, params JSONB NOT NULL, credits_estimate INTEGER NOT NULL,
    attempts INTEGER NOT NULL, created_at TIMESTAMPTZ NOT NULL,
    run_after TIMESTAMPTZ NOT NULL)"""
_COLUMNS = (
    "id, account_id, model, status, params, credits_estimate, attempts, created_at, run_after"
)
_SELECT = f"SELECT {_COLUMNS} FROM bench_baseline_rows WHERE id = "


def uuid7() -> str:
    """Time-ordered like Vivix's ids (48-bit milliseconds, then random bits)."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10))
    value = (value & ~(0xF << 76)) | (0x7 << 76)
    value = (value & ~(0x3 << 62)) | (0x2 << 62)
    return str(uuid.UUID(int=value))


Row = tuple[Any, ...]


class Store(ABC):
    """The two statements, on one driver."""

    @abstractmethod
    async def insert(self, row: Row) -> None: ...

    @abstractmethod
    async def select(self, row_id: str) -> Row | None: ...

    @abstractmethod
    async def close(self) -> None: ...


class SqliteStore(Store):
    """One aiosqlite connection for writes (in autocommit, so each INSERT is one hand-off
    to its thread and its own transaction) and a few for reads (WAL readers run
    concurrently), each read one hand-off (`execute_fetchall`)."""

    def __init__(self, writer: Any, readers: list[Any]) -> None:
        self.writer = writer
        self.readers = readers
        self._next = itertools.cycle(readers)

    @classmethod
    async def open(cls, path: str) -> SqliteStore:
        import aiosqlite

        async def connect() -> Any:
            connection = await aiosqlite.connect(path, isolation_level=None)
            for pragma in (
                "journal_mode=WAL",
                "synchronous=NORMAL",
                f"busy_timeout={BUSY_TIMEOUT_MS}",
            ):
                await connection.execute(f"PRAGMA {pragma}")
            return connection

        writer = await connect()
        await writer.execute(_SQLITE_TABLE)
        return cls(writer, [await connect() for _ in range(SQLITE_READERS)])

    async def insert(self, row: Row) -> None:
        await self.writer.execute(
            f"INSERT INTO bench_baseline_rows ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (*row[:4], json.dumps(row[4]), *row[5:7], row[7].isoformat(), row[8].isoformat()),
        )

    async def select(self, row_id: str) -> Row | None:
        rows = await next(self._next).execute_fetchall(_SELECT + "?", (row_id,))
        if not rows:
            return None
        row = tuple(rows[0])
        return (*row[:4], json.loads(row[4]), *row[5:7], datetime.fromisoformat(row[7]), row[8])

    async def close(self) -> None:
        for connection in (self.writer, *self.readers):
            await connection.close()


class PostgresStore(Store):
    """An asyncpg pool as large as Vivix's; each statement is its own transaction."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    @classmethod
    async def open(cls, url: str) -> PostgresStore:
        import asyncpg

        pool = await asyncpg.create_pool(url, min_size=4, max_size=POSTGRES_POOL)
        await pool.execute(_POSTGRES_TABLE)
        return cls(pool)

    async def insert(self, row: Row) -> None:
        await self.pool.execute(
            f"INSERT INTO bench_baseline_rows ({_COLUMNS}) "
            "VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8, $9)",
            *row[:4],
            json.dumps(row[4]),
            *row[5:],
        )

    async def select(self, row_id: str) -> Row | None:
        row = await self.pool.fetchrow(_SELECT + "$1", row_id)
        if row is None:
            return None
        return (*row[:4], json.loads(row[4]), *row[5:])

    async def close(self) -> None:
        await self.pool.close()


async def open_store(database_url: str) -> Store:
    """sqlite:///PATH (any +driver suffix is ignored) or postgresql://…"""
    scheme, rest = database_url.split("://", 1)
    if scheme.startswith("sqlite"):
        return await SqliteStore.open(rest[1:])
    return await PostgresStore.open("postgresql://" + rest)


def create_baseline_app(database_url: str) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.store = await open_store(database_url)
        try:
            yield
        finally:
            await app.state.store.close()

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def submit(request: Request) -> JSONResponse:
        body: dict[str, Any] = await request.json()
        now = datetime.now(UTC)
        row_id = uuid7()
        row = (row_id, ACCOUNT_ID, str(body.get("model", "")), "pending", body, 2, 0, now, now)
        await request.app.state.store.insert(row)
        return JSONResponse(
            {"id": row_id, "status": "pending", "created_at": now.isoformat()},
            status_code=201,
            headers={"Location": f"/rows/{row_id}"},
        )

    async def read(request: Request) -> JSONResponse:
        row = await request.app.state.store.select(request.path_params["row_id"])
        if row is None:
            return JSONResponse({"error": "NOT_FOUND"}, status_code=404)
        row_id, _, model, status, params, estimate, attempts, created_at, _ = row
        return JSONResponse(
            {
                "id": row_id,
                "status": status,
                "model": model,
                "credits_estimate": estimate,
                "attempts": attempts,
                "created_at": created_at.isoformat(),
                "params": params,
            }
        )

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/rows", submit, methods=["POST"]),
            Route("/rows/{row_id}", read),
        ],
        lifespan=lifespan,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True, help="sqlite:///PATH or postgresql://")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(
        create_baseline_app(args.database_url),
        host="127.0.0.1",
        port=args.port,
        **uvicorn_settings(),
    )


if __name__ == "__main__":
    main()
