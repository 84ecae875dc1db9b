"""Alembic migrations: the only way the schema is created (tests included)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection

from vivix.kit.db import null_pool_engine

_HERE = Path(__file__).parent


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_HERE))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.set_main_option("file_template", "%%(year)d%%(month).2d%%(day).2d_%%(rev)s_%%(slug)s")
    return config


async def upgrade_to_head(url: str) -> None:
    engine = null_pool_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_upgrade, url)
    finally:
        await engine.dispose()


def _upgrade(connection: Connection, url: str) -> None:
    config = alembic_config(url)
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    return head or ""


async def current_revision(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    engine = null_pool_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(
                lambda sync: MigrationContext.configure(sync).get_current_revision()
            )
    finally:
        await engine.dispose()
