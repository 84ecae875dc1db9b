from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from vivix.models import Account, ApiKey


async def get_key_with_account(session: AsyncSession, key_hash: str) -> tuple[ApiKey, Account] | None:
    row = (
        await session.execute(
            select(ApiKey, Account).join(Account, Account.id == ApiKey.account_id).where(
                ApiKey.key_hash == key_hash
            )
        )
    ).first()
    return None if row is None else (row[0], row[1])


async def lock_account(session: AsyncSession, account_id: str) -> Account:
    """The account row, locked until the transaction ends (FOR UPDATE on PostgreSQL; on
    SQLite the write transaction already holds the database write lock)."""
    account = (
        await session.execute(
            select(Account).where(Account.id == account_id).with_for_update().execution_options(
                populate_existing=True
            )
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
