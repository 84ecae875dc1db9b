"""The migrations are the only way the schema is built: applied to a fresh database they
must produce exactly the SQLAlchemy models' schema, on SQLite and on PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Connection, Integer, MetaData, inspect, select, text
from sqlalchemy.engine import make_url

from tests.conftest import Backend
from vivix.kit.db import null_pool_engine
from vivix.migrations import alembic_config, current_revision, head_revision, upgrade_to_head
from vivix.models import Base


@pytest.fixture
async def fresh_url(backend: Backend, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database on the backend's server, dropped afterwards."""
    if backend.name == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
        return
    server = make_url(backend.database_url).set(database="postgres")
    admin_url = server.render_as_string(hide_password=False)
    name = f"vivix_migrations_{uuid.uuid4().hex[:10]}"
    await _autocommit(admin_url, f'CREATE DATABASE "{name}"')
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        await _autocommit(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _autocommit(url: str, statement: str) -> None:
    engine = null_pool_engine(url)
    async with engine.connect() as connection:
        await connection.execution_options(isolation_level="AUTOCOMMIT")
        await connection.execute(text(statement))
    await engine.dispose()


async def schema_diff(url: str, metadata: MetaData) -> list[Any]:
    def compare(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": True}
        )
        return list(compare_metadata(context, metadata))

    engine = null_pool_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(compare)
    finally:
        await engine.dispose()


async def table_names(url: str) -> set[str]:
    engine = null_pool_engine(url)
    try:
        async with engine.connect() as connection:
            return set(await connection.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await engine.dispose()


async def downgrade_to_base(url: str) -> None:
    await _migrate(url, "base", down=True)


async def test_migrations_build_exactly_the_models_schema(fresh_url: str) -> None:
    await upgrade_to_head(fresh_url)
    assert await schema_diff(fresh_url, Base.metadata) == []
    assert await current_revision(fresh_url) == head_revision()
    assert set(Base.metadata.tables) <= await table_names(fresh_url)


async def test_the_comparison_notices_a_drift(fresh_url: str) -> None:
    await upgrade_to_head(fresh_url)
    drifted = MetaData(naming_convention=Base.metadata.naming_convention)
    for table in Base.metadata.sorted_tables:
        copy = table.to_metadata(drifted)
        if table.name == "accounts":
            copy.append_column(Column("loyalty_points", Integer, nullable=True))
    diff = await schema_diff(fresh_url, drifted)
    assert [entry[0] for entry in diff] == ["add_column"]
    assert diff[0][3].name == "loyalty_points"


async def test_upgrading_twice_is_a_no_op(fresh_url: str) -> None:
    await upgrade_to_head(fresh_url)
    await upgrade_to_head(fresh_url)
    assert await schema_diff(fresh_url, Base.metadata) == []


async def test_downgrade_to_base_and_back_to_head(fresh_url: str) -> None:
    await upgrade_to_head(fresh_url)
    await downgrade_to_base(fresh_url)
    assert await table_names(fresh_url) <= {"alembic_version"}
    await upgrade_to_head(fresh_url)
    assert await schema_diff(fresh_url, Base.metadata) == []


async def _migrate(url: str, revision: str, *, down: bool = False) -> None:
    def run(connection: Connection) -> None:
        config = alembic_config(url)
        config.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(config, revision)

    engine = null_pool_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(run)
    finally:
        await engine.dispose()


async def test_0005_turns_stored_output_urls_into_storage_keys(fresh_url: str) -> None:
    """Rows rendered before 0005 kept a URL frozen with the public URL of their day; after it
    they keep the storage key, whatever host or bucket base the URL had."""
    from vivix.kit.clock import utcnow

    await _migrate(fresh_url, "0004")
    now = utcnow()
    gen_id = str(uuid.uuid4())
    keys = [f"{gen_id}/{'a' * 32}/0.png", f"{gen_id}/{'b' * 32}/1.png"]
    outputs = [
        {"url": f"http://old-host:8000/files/{keys[0]}", "content_type": "image/png", "bytes": 9},
        {"url": f"https://cdn.example.com/bucket/prefix/{keys[1]}", "content_type": "image/png"},
    ]
    accounts, generations = Base.metadata.tables["accounts"], Base.metadata.tables["generations"]
    engine = null_pool_engine(fresh_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                accounts.insert().values(
                    id="acct-1", name="a", tier="pro", cycle_anchor=now, cycle_started_at=now,
                    cycle_resets_at=now, created_at=now, updated_at=now,
                )
            )  # fmt: skip
            await connection.execute(
                generations.insert().values(
                    id=gen_id, account_id="acct-1", api_key_id="k", model="m", status="completed",
                    params={}, credits_estimate=1, created_at=now, run_after=now, outputs=outputs,
                )
            )  # fmt: skip
        await _migrate(fresh_url, "0005")
        async with engine.connect() as connection:
            stored = (await connection.execute(select(generations.c.outputs))).one().outputs
        assert [o["key"] for o in stored] == keys
        assert all("url" not in o for o in stored)
        assert stored[0]["bytes"] == 9
        await _migrate(fresh_url, "0004", down=True)
        async with engine.connect() as connection:
            restored = (await connection.execute(select(generations.c.outputs))).one().outputs
        assert [o["url"] for o in restored] == [f"/files/{k}" for k in keys]
    finally:
        await engine.dispose()
