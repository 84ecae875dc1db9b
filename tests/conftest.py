"""Test harness. Every test that uses `runtime` runs on SQLite, and again on PostgreSQL +
Redis when VIVIX_TEST_POSTGRES_URL / VIVIX_TEST_REDIS_URL are set. With CI=true those
variants are required: unreachable services fail the run instead of skipping.

Each session (each xdist worker) creates its own databases, builds them with the
migrations, and drops them at the end; tables are emptied between tests."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from tests.openapi_conformance import ConformanceCheckingTransport
from vivix.app import create_app
from vivix.kit.db import null_pool_engine
from vivix.migrations import upgrade_to_head
from vivix.models import Base
from vivix.runtime import Runtime, build_runtime, close_runtime
from vivix.settings import Settings, load_settings

IN_CI = os.environ.get("CI", "").lower() == "true"
POSTGRES_URL = os.environ.get("VIVIX_TEST_POSTGRES_URL")
REDIS_URL = os.environ.get("VIVIX_TEST_REDIS_URL")


@dataclass(frozen=True)
class Backend:
    name: str
    database_url: str
    redis_url: str | None


def _asyncpg_url(url: str) -> str:
    return "postgresql+asyncpg://" + url.split("://", 1)[1]


async def _create_pg_database(admin_url: str, name: str) -> None:
    engine = null_pool_engine(admin_url)
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    await engine.dispose()


async def _drop_pg_database(admin_url: str, name: str) -> None:
    engine = null_pool_engine(admin_url)
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    await engine.dispose()


async def _check_redis(url: str) -> None:
    import redis.asyncio as redis

    client = redis.from_url(url, socket_connect_timeout=2)
    try:
        await client.ping()
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
def sqlite_backend(tmp_path_factory: pytest.TempPathFactory) -> Backend:
    path = tmp_path_factory.mktemp("sqlite") / "vivix.db"
    url = f"sqlite+aiosqlite:///{path}"
    asyncio.run(upgrade_to_head(url))
    return Backend("sqlite", url, None)


@pytest.fixture(scope="session")
def postgres_backend() -> Iterator[Backend]:
    if not POSTGRES_URL or not REDIS_URL:
        if IN_CI:
            pytest.fail("CI=true needs VIVIX_TEST_POSTGRES_URL and VIVIX_TEST_REDIS_URL")
        pytest.skip(
            "set VIVIX_TEST_POSTGRES_URL and VIVIX_TEST_REDIS_URL for the PostgreSQL + Redis variant"
        )
    admin_url = _asyncpg_url(POSTGRES_URL)
    name = f"vivix_test_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(_create_pg_database(admin_url, name))
        asyncio.run(_check_redis(REDIS_URL))
    except Exception as exc:
        message = f"PostgreSQL/Redis unreachable: {exc!r}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    asyncio.run(upgrade_to_head(url))
    yield Backend("postgres", url, REDIS_URL)
    asyncio.run(_drop_pg_database(admin_url, name))


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> Backend:
    fixture = "sqlite_backend" if request.param == "sqlite" else "postgres_backend"
    result: Backend = request.getfixturevalue(fixture)
    return result


def make_settings(backend: Backend, data_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": data_dir,
        "database_url": backend.database_url,
        "redis_url": backend.redis_url,
        "secret_key": "test-secret",
        "public_url": "http://testserver",
    }
    values.update(overrides)
    return load_settings(**values)


async def empty_tables(runtime: Runtime) -> None:
    async with runtime.db.transaction() as session:
        for table in reversed(Base.metadata.sorted_tables):
            await session.execute(table.delete())


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    """Override in a test module to change settings for its runtime."""
    return {}


@pytest.fixture
async def runtime(
    backend: Backend, tmp_path: Path, settings_overrides: dict[str, object]
) -> AsyncIterator[Runtime]:
    settings = make_settings(backend, tmp_path, **settings_overrides)
    runtime = await build_runtime(settings)
    # A fresh key space per test: counters never leak between tests sharing one Redis.
    from vivix.limits.service import RateLimiter

    await runtime.limiter.close()
    runtime.limiter = RateLimiter(
        settings.redis_url,
        fallback_divisor=settings.redis.fallback_divisor,
        socket_timeout_s=settings.redis.socket_timeout_s,
        key_prefix=f"vivix-test-{uuid.uuid4().hex[:10]}",
    )
    await empty_tables(runtime)
    try:
        yield runtime
    finally:
        await empty_tables(runtime)
        await close_runtime(runtime)


@pytest.fixture
async def client(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(runtime.settings, runtime=runtime)
    # Every /api/v1 response a test sees is also checked against /openapi.json.
    transport = ConformanceCheckingTransport(
        httpx.ASGITransport(app=app, raise_app_exceptions=False)
    )
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http
