"""/healthz answers while the process lives; /readyz says whether it can serve: database
reachable, schema at this version's head, storage writable, Redis reported."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import httpx
import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from vivix.app import create_app
from vivix.kit.db import null_pool_engine
from vivix.migrations import alembic_config, head_revision
from vivix.runtime import Runtime, build_runtime, close_runtime
from vivix.settings import load_settings


async def test_healthz_is_trivial_and_readyz_checks_every_dependency(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    health = await client.get("/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    ready = await client.get("/readyz")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["status"] == "ready"
    expected = {"database": "ok", "migrations": "ok", "storage": "ok"}
    if runtime.limiter.uses_redis:
        expected["redis"] = "ok"
    assert body["checks"] == expected


async def _migrate_to(url: str, revision: str) -> None:
    def upgrade(connection: Connection) -> None:
        config = alembic_config(url)
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    engine = null_pool_engine(url)
    async with engine.begin() as connection:
        await connection.run_sync(upgrade)
    await engine.dispose()


async def _serve(runtime: Runtime) -> httpx.AsyncClient:
    app = create_app(runtime.settings, runtime=runtime)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def test_readyz_is_503_until_the_schema_is_at_head(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    script = ScriptDirectory.from_config(alembic_config(url))
    previous = script.get_revision(head_revision()).down_revision
    assert isinstance(previous, str)
    await _migrate_to(url, previous)
    runtime = await build_runtime(load_settings(data_dir=tmp_path, database_url=url))
    try:
        async with await _serve(runtime) as http:
            behind = await http.get("/readyz")
            assert behind.status_code == 503
            checks = behind.json()["checks"]
            assert checks["database"] == "ok"
            assert previous in checks["migrations"]
            assert "vivix migrate" in checks["migrations"]
            assert (await http.get("/healthz")).status_code == 200
            await _migrate_to(url, "head")
            assert (await http.get("/readyz")).status_code == 200
    finally:
        await close_runtime(runtime)


async def test_readyz_is_503_when_storage_is_not_writable(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    url = f"sqlite+aiosqlite:///{tmp_path / 'v.db'}"
    await _migrate_to(url, "head")
    settings = load_settings(data_dir=tmp_path, database_url=url, storage_url=outputs.as_uri())
    runtime = await build_runtime(settings)
    try:
        async with await _serve(runtime) as http:
            assert (await http.get("/readyz")).status_code == 200
            shutil.rmtree(outputs)
            outputs.write_text("a file where the outputs directory should be")
            broken = await http.get("/readyz")
            assert broken.status_code == 503
            assert broken.json()["checks"]["storage"].startswith("not writable")
            assert broken.json()["checks"]["database"] == "ok"
    finally:
        await close_runtime(runtime)


async def test_readyz_is_503_when_the_database_is_unreachable(tmp_path: Path) -> None:
    settings = load_settings(
        data_dir=tmp_path, database_url="postgresql://nobody@127.0.0.1:9/nothing"
    )
    runtime = await build_runtime(settings)
    try:
        async with await _serve(runtime) as http:
            down = await http.get("/readyz")
            assert down.status_code == 503
            assert down.json()["checks"]["database"].startswith("error")
            assert (await http.get("/healthz")).status_code == 200
    finally:
        await close_runtime(runtime)


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_redis_down_is_reported_but_the_replica_stays_ready(runtime: Runtime) -> None:
    from vivix.limits.service import RateLimiter

    broken = dataclasses.replace(
        runtime, limiter=RateLimiter("redis://127.0.0.1:9/0", socket_timeout_s=0.2)
    )
    try:
        async with await _serve(broken) as http:
            response = await http.get("/readyz")
            assert response.status_code == 200
            assert response.json()["checks"]["redis"].startswith("degraded")
    finally:
        await broken.limiter.close()
