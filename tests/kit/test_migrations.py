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
from sqlalchemy import Column, Connection, Integer, MetaData, inspect, text
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
    def downgrade(connection: Connection) -> None:
        config = alembic_config(url)
        config.attributes["connection"] = connection
        command.downgrade(config, "base")

    engine = null_pool_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(downgrade)
    finally:
        await engine.dispose()


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
