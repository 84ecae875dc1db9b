"""Studio users and sessions: creating users, signing in (throttled), resolving the
signed-in viewer on each request, signing out, changing passwords.

Sessions are server-side rows: the browser holds a random token, the database its SHA-256.
Every request reads the row, so signing out (one, all others, or by a password change)
takes effect on the next request."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession

from vivix.accounts import repository as accounts_repository
from vivix.accounts import service as accounts
from vivix.accounts.gate import roll_cycle
from vivix.accounts.service import AccountLimits, AccountView, limits_for
from vivix.kit.clock import utcnow
from vivix.kit.errors import (
    AccountSuspended,
    AdminConflict,
    AdminNotFound,
    InvalidParams,
    SignInFailed,
    SignInThrottled,
    SignupClosed,
)
from vivix.kit.ids import base62, new_uuid
from vivix.models import Account, StudioSession, User
from vivix.users import passwords, repository

if TYPE_CHECKING:
    from vivix.runtime import Runtime

SESSION_COOKIE = "vivix_session"  # the Studio's session token
SESSION_TOKEN_BYTES = 32
# last_seen_at is written at most this often per session (not on every page view).
TOUCH_EVERY = timedelta(minutes=5)
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
_ACCOUNT_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.\-]+")


@dataclass(frozen=True, slots=True)
class Viewer:
    """The signed-in person on this request, with their account as read now."""

    session_id: str
    csrf_token: str
    user_id: str
    email: str
    is_operator: bool
    account_name: str
    account: AccountView
    limits: AccountLimits


def normalize_email(raw: str) -> str:
    email = raw.strip().lower()
    if len(email) > 254 or not _EMAIL.match(email):
        raise InvalidParams("email", "must be an email address like name@example.com")
    return email


def session_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def create_user(
    session: AsyncSession,
    runtime: Runtime,
    *,
    email: str,
    password: str,
    account_name: str | None = None,
    operator: bool = False,
) -> tuple[User, Account]:
    """A user in `account_name`, or (None) in a new free account of their own."""
    email = normalize_email(email)
    weakness = passwords.check_strength(password)
    if weakness is not None:
        raise InvalidParams("password", weakness)
    if await repository.find_user_by_email(session, email) is not None:
        raise AdminConflict(
            f"A user with the email {email} already exists.", next="Sign in instead."
        )
    if account_name is not None:
        account = await accounts_repository.find_account(session, account_name)
        if account is None:
            raise AdminNotFound(f"No account named {account_name!r}.")
    else:
        account = await accounts.create_account(
            session,
            name=await _free_account_name(session, email),
            tier="free",
            default_models=runtime.catalog.default_allowlist("free"),
        )
        # The free tier's grant, through the ledger like every credit.
        await runtime.ledger.grant_cycle(
            session,
            account.id,
            accounts.opening_grant(account, runtime.settings, None),
            cycle_started_at=account.cycle_started_at,
        )
    now = utcnow()
    user = User(
        id=new_uuid(),
        email=email,
        password_hash=await passwords.hash_password(password),
        account_id=account.id,
        is_operator=operator,
        created_at=now,
        updated_at=now,
        password_changed_at=now,
        last_sign_in_at=None,
    )
    session.add(user)
    await session.flush()
    return user, account


async def _free_account_name(session: AsyncSession, email: str) -> str:
    base = _ACCOUNT_NAME_CHARS.sub("-", email.replace("@", "-at-")).strip("-._")[:80] or "user"
    name = base
    while await accounts_repository.find_account(session, name) is not None:
        name = f"{base}-{base62(4).lower()}"
    return name


async def sign_up(
    runtime: Runtime, email: str, password: str, client_address: str, user_agent: str
) -> str:
    """Open sign-up: a user with a new free account (the tier's grant), signed in."""
    if runtime.settings.studio.signup != "open":
        raise SignupClosed()
    async with runtime.db.transaction() as session:
        user, _ = await create_user(session, runtime, email=email, password=password)
        return await _start_session(session, runtime, user, client_address, user_agent)


async def sign_in(
    runtime: Runtime, email: str, password: str, client_address: str, user_agent: str
) -> str:
    """The new session's cookie token. Failed attempts count per email and per client
    address; past the allowance both answer 429 until the window resets, before any
    password is checked (so a throttled guess learns nothing)."""
    studio = runtime.settings.studio
    window = studio.signin_window_minutes
    email_key = raw_email_key(email)
    limits = (
        ("signin-email", email_key, studio.signin_failures_per_email),
        ("signin-address", client_address, studio.signin_failures_per_address),
    )
    for scope, key, allowed in limits:
        left = await runtime.limiter.failures_left(scope, key, allowed, window)
        if not left.allowed:
            raise SignInThrottled(
                headers={"Retry-After": str(left.reset_after_s)}, retry_after=left.reset_after_s
            )
    async with runtime.db.read() as session:
        user = await repository.find_user_by_email(session, email_key)
    ok = await passwords.verify_password(user.password_hash if user else None, password)
    if not ok or user is None:
        for scope, key, allowed in limits:
            await runtime.limiter.count_failure(scope, key, allowed, window)
        raise SignInFailed()
    await runtime.limiter.forget_failures(
        "signin-email", email_key, studio.signin_failures_per_email, window
    )
    async with runtime.db.transaction() as session:
        account = await accounts_repository.find_account(session, user.account_id)
        if account is not None and account.suspended_at is not None:
            raise AccountSuspended()
        fresh = await repository.get_user(session, user.id)
        assert fresh is not None
        if passwords.needs_rehash(fresh.password_hash):
            fresh.password_hash = await passwords.hash_password(password)
        fresh.last_sign_in_at = utcnow()
        return await _start_session(session, runtime, fresh, client_address, user_agent)


def raw_email_key(email: str) -> str:
    """The throttle's key for a typed email: normalized, and bounded in size."""
    return email.strip().lower()[:254]


async def _start_session(
    session: AsyncSession, runtime: Runtime, user: User, client_address: str, user_agent: str
) -> str:
    token = secrets.token_urlsafe(SESSION_TOKEN_BYTES)
    now = utcnow()
    session.add(
        StudioSession(
            id=session_key(token),
            user_id=user.id,
            csrf_token=secrets.token_urlsafe(32),
            created_at=now,
            last_seen_at=now,
            expires_at=now + timedelta(days=runtime.settings.studio.session_days),
            revoked_at=None,
            user_agent=user_agent[:300],
            client_address=client_address[:64],
        )
    )
    await session.flush()
    return token


async def resolve_viewer(runtime: Runtime, token: str | None) -> Viewer | None:
    """The viewer for a session cookie, or None (no cookie, unknown, revoked, expired,
    idle too long, or the account is suspended)."""
    if not token or len(token) > 128:
        return None
    key = session_key(token)
    async with runtime.db.autocommit() as connection:
        row = await repository.read_viewer(connection, key)
    if row is None or row.revoked_at is not None or row.suspended_at is not None:
        return None
    now = utcnow()
    idle_limit = timedelta(days=runtime.settings.studio.idle_days)
    if row.expires_at <= now or row.last_seen_at + idle_limit <= now:
        return None
    if now - row.last_seen_at >= TOUCH_EVERY:
        await _touch(runtime, key)
    account = AccountView.of_caller_row(row)
    limits = limits_for(account, runtime.settings)
    if account.cycle_resets_at <= now:
        account = await roll_cycle(runtime, account.id, limits.monthly_credits)
    return Viewer(
        session_id=key,
        csrf_token=row.csrf_token,
        user_id=row.user_id,
        email=row.email,
        is_operator=bool(row.is_operator),
        account_name=row.account_name,
        account=account,
        limits=limits,
    )


async def _touch(runtime: Runtime, key: str) -> None:
    async with runtime.db.write_connection() as connection:
        await repository.touch_session(connection, key, utcnow())


async def refreshed(runtime: Runtime, viewer: Viewer) -> Viewer:
    """The viewer with its account read again (after a change this request made)."""
    async with runtime.db.read() as session:
        account = await accounts_repository.find_account(session, viewer.account.id)
    if account is None:
        return viewer
    return replace(viewer, account=AccountView.of(account))


async def sign_out(runtime: Runtime, viewer: Viewer, *, everywhere: bool = False) -> None:
    async with runtime.db.transaction() as session:
        await repository.revoke_sessions(
            session, viewer.user_id, utcnow(), only=None if everywhere else viewer.session_id
        )


async def sign_out_session(runtime: Runtime, viewer: Viewer, session_id: str) -> bool:
    """Sign out one of the viewer's own sessions (another user's id changes nothing)."""
    async with runtime.db.transaction() as session:
        count = await repository.revoke_sessions(session, viewer.user_id, utcnow(), only=session_id)
    return count > 0


async def sign_out_others(runtime: Runtime, viewer: Viewer) -> int:
    async with runtime.db.transaction() as session:
        return await repository.revoke_sessions(
            session, viewer.user_id, utcnow(), keep=viewer.session_id
        )


async def list_sessions(runtime: Runtime, viewer: Viewer) -> list[StudioSession]:
    async with runtime.db.read() as session:
        return await repository.list_live_sessions(session, viewer.user_id, utcnow())


async def change_password(runtime: Runtime, viewer: Viewer, current: str, new: str) -> int:
    """Set a new password after checking the current one; every other session of the
    user is signed out. How many were."""
    weakness = passwords.check_strength(new)
    if weakness is not None:
        raise InvalidParams("new_password", weakness)
    async with runtime.db.read() as session:
        user = await repository.get_user(session, viewer.user_id)
    if user is None or not await passwords.verify_password(user.password_hash, current):
        raise InvalidParams("current_password", "is not your current password")
    new_hash = await passwords.hash_password(new)
    async with runtime.db.transaction() as session:
        fresh = await repository.get_user(session, viewer.user_id)
        assert fresh is not None
        now = utcnow()
        fresh.password_hash = new_hash
        fresh.password_changed_at = now
        fresh.updated_at = now
        return await repository.revoke_sessions(
            session, viewer.user_id, now, keep=viewer.session_id
        )
