"""Queries of the Studio's own tables: users and their sessions."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Row, bindparam, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from vivix.accounts.repository import ACCOUNT_VIEW_COLUMNS
from vivix.models import Account, StudioSession, User

# The signed-in viewer in one Core statement: session, user and the account (the account
# columns named as `accounts.repository.select_caller` names them, for `AccountView`).
_VIEWER: Any = (
    select(
        StudioSession.id.label("session_id"),
        StudioSession.csrf_token,
        StudioSession.expires_at,
        StudioSession.last_seen_at,
        StudioSession.revoked_at,
        User.id.label("user_id"),
        User.email,
        User.is_operator,
        Account.name.label("account_name"),
        *ACCOUNT_VIEW_COLUMNS,
    )
    .join(User, User.id == StudioSession.user_id)
    .join(Account, Account.id == User.account_id)
    .where(StudioSession.id == bindparam("session_id"))
)


async def read_viewer(connection: AsyncConnection, session_id: str) -> Row[Any] | None:
    return (await connection.execute(_VIEWER, {"session_id": session_id})).first()


async def touch_session(connection: AsyncConnection, session_id: str, seen_at: datetime) -> None:
    await connection.execute(
        update(StudioSession)
        .where(StudioSession.id == session_id, StudioSession.revoked_at.is_(None))
        .values(last_seen_at=seen_at)
    )


async def find_user_by_email(session: AsyncSession, email: str) -> User | None:
    return (await session.execute(select(User).where(User.email == email))).scalar_one_or_none()


async def get_user(session: AsyncSession, user_id: str) -> User | None:
    return await session.get(User, user_id)


async def count_users(session: AsyncSession) -> int:
    return int((await session.execute(select(func.count()).select_from(User))).scalar_one())


async def list_users(session: AsyncSession, query: str = "", limit: int = 200) -> list[Row[Any]]:
    """Users with their account's name, newest first; `query` matches email or account."""
    statement: Any = (
        select(User, Account.name.label("account_name"))
        .join(Account, Account.id == User.account_id)
        .order_by(User.created_at.desc())
        .limit(limit)
    )
    if query:
        pattern = f"%{query.lower()}%"
        statement = statement.where(
            or_(func.lower(User.email).like(pattern), func.lower(Account.name).like(pattern))
        )
    return list((await session.execute(statement)).all())


async def list_account_users(session: AsyncSession, account_id: str) -> list[User]:
    return list(
        (
            await session.execute(
                select(User).where(User.account_id == account_id).order_by(User.created_at)
            )
        ).scalars()
    )


async def list_live_sessions(
    session: AsyncSession, user_id: str, now: datetime
) -> list[StudioSession]:
    return list(
        (
            await session.execute(
                select(StudioSession)
                .where(
                    StudioSession.user_id == user_id,
                    StudioSession.revoked_at.is_(None),
                    StudioSession.expires_at > now,
                )
                .order_by(StudioSession.last_seen_at.desc())
            )
        ).scalars()
    )


async def revoke_sessions(
    session: AsyncSession,
    user_id: str,
    now: datetime,
    *,
    only: str | None = None,
    keep: str | None = None,
) -> int:
    """Revoke the user's live sessions: all, all but `keep`, or just `only`. How many."""
    statement = update(StudioSession).where(
        StudioSession.user_id == user_id, StudioSession.revoked_at.is_(None)
    )
    if only is not None:
        statement = statement.where(StudioSession.id == only)
    if keep is not None:
        statement = statement.where(StudioSession.id != keep)
    result = await session.execute(statement.values(revoked_at=now))
    return int(result.rowcount)  # type: ignore[attr-defined]


async def revoke_account_sessions(session: AsyncSession, account_id: str, now: datetime) -> None:
    users = select(User.id).where(User.account_id == account_id).scalar_subquery()
    await session.execute(
        update(StudioSession)
        .where(StudioSession.user_id.in_(users), StudioSession.revoked_at.is_(None))
        .values(revoked_at=now)
    )
