from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Row, Select, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from vivix.kit.db import ReadConnection
from vivix.models import Account, ApiKey

# The account as `AccountView` reads it (`account_id` and the columns by name), for the
# statements that authenticate a caller: an API key here, a Studio session in `studio`.
ACCOUNT_VIEW_COLUMNS: list[Any] = [
    Account.id.label("account_id"),
    Account.suspended_at,
    Account.tier,
    Account.balance,
    Account.held,
    Account.active_jobs,
    Account.cycle_resets_at,
    Account.spent_this_cycle,
    Account.granted_this_cycle,
    Account.allowed_models,
    Account.price_overrides,
    Account.calls_per_minute,
    Account.concurrent_jobs,
    Account.monthly_credits,
]
# What authentication needs, in one Core statement (no ORM entity loading on every call).
_CALLER_COLUMNS: list[Any] = [
    ApiKey.id.label("key_id"),
    ApiKey.is_test,
    ApiKey.revoked_at,
    ApiKey.last_used_at,
    *ACCOUNT_VIEW_COLUMNS,
]


def select_caller(*more_columns: Any) -> Select[*tuple[Any, ...]]:
    """The key with hash `:key_hash` and its account: `key_id`, `is_test`, `revoked_at`,
    `account_id` and the account's other columns by name, plus `more_columns` (a caller may
    join more to answer its request in the same statement)."""
    return (
        select(*_CALLER_COLUMNS, *more_columns)
        .join(Account, Account.id == ApiKey.account_id)
        .where(ApiKey.key_hash == bindparam("key_hash"))
    )


_CALLER_BY_KEY_HASH = select_caller()


async def get_caller(connection: ReadConnection, key_hash: str) -> Row[Any] | None:
    return (await connection.execute(_CALLER_BY_KEY_HASH, {"key_hash": key_hash})).first()


async def touch_key(connection: AsyncConnection, key_id: str, used_at: datetime) -> None:
    await connection.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=used_at))


async def list_account_keys(session: AsyncSession, account_id: str) -> list[ApiKey]:
    """The account's keys, live ones first, newest first."""
    return list(
        (
            await session.execute(
                select(ApiKey)
                .where(ApiKey.account_id == account_id)
                .order_by(ApiKey.revoked_at.is_not(None), ApiKey.created_at.desc())
            )
        ).scalars()
    )


async def find_account_key(session: AsyncSession, account_id: str, key_id: str) -> ApiKey | None:
    return (
        await session.execute(
            select(ApiKey).where(ApiKey.id == key_id, ApiKey.account_id == account_id)
        )
    ).scalar_one_or_none()


async def lock_account(session: AsyncSession, account_id: str) -> Account:
    """The account row, locked until the transaction ends (FOR UPDATE on PostgreSQL; on
    SQLite the write transaction already holds the database write lock), for changes of
    its settings. Its money columns are the ledger's (`vivix.billing.ledger`)."""
    account = (
        await session.execute(
            select(Account)
            .where(Account.id == account_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).scalar_one()
    return account


async def find_account(session: AsyncSession, name_or_id: str) -> Account | None:
    return (
        await session.execute(
            select(Account).where((Account.id == name_or_id) | (Account.name == name_or_id))
        )
    ).scalar_one_or_none()


async def list_accounts(session: AsyncSession) -> list[Account]:
    return list((await session.execute(select(Account).order_by(Account.created_at))).scalars())


async def count_accounts(session: AsyncSession) -> int:
    return len((await session.execute(select(Account.id).limit(1))).all())


async def list_keys(session: AsyncSession, account_id: str) -> list[ApiKey]:
    return list(
        (
            await session.execute(
                select(ApiKey).where(ApiKey.account_id == account_id).order_by(ApiKey.created_at)
            )
        ).scalars()
    )


async def find_keys(session: AsyncSession, prefix_or_id: str) -> list[ApiKey]:
    return list(
        (
            await session.execute(
                select(ApiKey).where((ApiKey.id == prefix_or_id) | (ApiKey.prefix == prefix_or_id))
            )
        ).scalars()
    )


async def search_accounts(session: AsyncSession, query: str, limit: int) -> list[Account]:
    """Accounts whose name or id contains `query`, newest first."""
    statement = select(Account).order_by(Account.created_at.desc()).limit(limit)
    if query:
        pattern = f"%{query.lower()}%"
        statement = statement.where(func.lower(Account.name).like(pattern) | (Account.id == query))
    return list((await session.execute(statement)).scalars())


async def list_keys_with_accounts(session: AsyncSession, query: str, limit: int) -> list[Row[Any]]:
    """Keys of every account (newest first) with the account's name; `query` matches the
    key's prefix or name or the account's name."""
    statement: Any = (
        select(ApiKey, Account.name.label("account_name"))
        .join(Account, Account.id == ApiKey.account_id)
        .order_by(ApiKey.created_at.desc())
        .limit(limit)
    )
    if query:
        pattern = f"%{query.lower()}%"
        statement = statement.where(
            func.lower(ApiKey.prefix).like(pattern)
            | func.lower(ApiKey.name).like(pattern)
            | func.lower(Account.name).like(pattern)
        )
    return list((await session.execute(statement)).all())
