"""The baseline that bench_api measures Vivix against: the least an HTTP service can do
for the same two calls, on the same server stack and the same database plumbing.

- POST /rows: one INSERT of a generation-like row in its own write transaction, a small
  JSON answer.
- GET /rows/{id}: one primary-key SELECT of such a row, the row as JSON.

Plain Starlette (the layer FastAPI is built on), SQLAlchemy Core statements, and the
connections from `vivix.kit.db.Database` (`autocommit`, `write_connection`) so pool
sizes, SQLite pragmas, autocommit reads, `BEGIN IMMEDIATE` and the in-process SQLite write
lock are the app's own by construction. Served by
`uvicorn.run` with the settings `vivix serve` uses.

Run: python -m bench.baseline_app --database-url URL --port PORT
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bench.common import uvicorn_settings
from vivix.kit.clock import iso, utcnow
from vivix.kit.db import Database
from vivix.kit.ids import uuid7
from vivix.models.base import JsonValue, UtcDateTime
from vivix.settings import DatabaseSettings

metadata = MetaData()

# As wide as the brief asks: ids, a JSON params column, a few ints and timestamps.
baseline_rows = Table(
    "bench_baseline_rows",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("account_id", String(36), nullable=False),
    Column("model", String(100), nullable=False),
    Column("status", String(16), nullable=False),
    Column("params", JsonValue, nullable=False),
    Column("credits_estimate", Integer, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("run_after", UtcDateTime, nullable=False),
)

ACCOUNT_ID = "00000000-0000-4000-8000-000000000001"


def create_baseline_app(database_url: str) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        defaults = DatabaseSettings()
        db = Database(
            database_url,
            pool_size=defaults.pool_size,
            max_overflow=defaults.max_overflow,
            sqlite_busy_timeout_ms=defaults.sqlite_busy_timeout_ms,
        )
        async with db.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        app.state.db = db
        try:
            yield
        finally:
            await db.dispose()

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def submit(request: Request) -> JSONResponse:
        db: Database = request.app.state.db
        body: dict[str, Any] = await request.json()
        now = utcnow()
        row_id = uuid7()
        # db.write_connection(): the same write boundary Vivix's submit uses (write lock +
        # BEGIN IMMEDIATE on SQLite), a Core statement on it.
        async with db.write_connection() as conn:
            await conn.execute(
                insert(baseline_rows).values(
                    id=row_id,
                    account_id=ACCOUNT_ID,
                    model=str(body.get("model", "")),
                    status="pending",
                    params=body,
                    credits_estimate=2,
                    attempts=0,
                    created_at=now,
                    run_after=now,
                )
            )
        return JSONResponse(
            {"id": row_id, "status": "pending", "created_at": iso(now)},
            status_code=201,
            headers={"Location": f"/rows/{row_id}"},
        )

    async def read(request: Request) -> JSONResponse:
        db: Database = request.app.state.db
        # db.autocommit(): the autocommit connection Vivix's reads use.
        async with db.autocommit() as conn:
            row = (
                await conn.execute(
                    select(baseline_rows).where(baseline_rows.c.id == request.path_params["row_id"])
                )
            ).first()
        if row is None:
            return JSONResponse({"error": "NOT_FOUND"}, status_code=404)
        return JSONResponse(
            {
                "id": row.id,
                "status": row.status,
                "model": row.model,
                "credits_estimate": row.credits_estimate,
                "attempts": row.attempts,
                "created_at": iso(row.created_at),
                "params": row.params,
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
    parser.add_argument(
        "--database-url", required=True, help="sqlite+aiosqlite:// or postgresql+asyncpg://"
    )
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
