"""Accounts, tiers and API keys."""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncSession

from vivix.accounts import repository
from vivix.kit.bounds import MAX_CALLS_PER_MINUTE, MAX_CONCURRENT_JOBS, MAX_CREDIT_AMOUNT
from vivix.kit.clock import add_months, utcnow
from vivix.kit.errors import (
    AccountSuspended,
    AdminConflict,
    AdminInvalid,
    AdminNotFound,
    KeyInvalid,
    KeyNotFound,
    KeyRevoked,
    TierLocked,
    Unauthorized,
)
from vivix.kit.ids import base62, is_base62, new_uuid
from vivix.models import Account, ApiKey
from vivix.settings import Settings, Tier

LIVE_PREFIX = "vvx_live_"
TEST_PREFIX = "vvx_test_"
KEY_RANDOM_LENGTH = 32
KEY_LENGTH = len(LIVE_PREFIX) + KEY_RANDOM_LENGTH
LISTED_PREFIX_LENGTH = 15
_ACCOUNT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")


@dataclass(frozen=True, slots=True)
class AccountLimits:
    api_access: bool
    calls_per_minute: int
    concurrent_jobs: int
    monthly_credits: int


class HasLimitOverrides(Protocol):
    @property
    def tier(self) -> str: ...
    @property
    def calls_per_minute(self) -> int | None: ...
    @property
    def concurrent_jobs(self) -> int | None: ...
    @property
    def monthly_credits(self) -> int | None: ...


@dataclass(frozen=True, slots=True)
class AccountView:
    """The caller's account as read when the request was authenticated: what responses show
    and the gates check. Not locked: admission re-checks balance and concurrency under the
    account's row lock."""

    id: str
    tier: str
    balance: int
    held: int
    active_jobs: int
    cycle_resets_at: datetime
    spent_this_cycle: int
    granted_this_cycle: int
    allowed_models: list[str]
    price_overrides: dict[str, Any]
    calls_per_minute: int | None
    concurrent_jobs: int | None
    monthly_credits: int | None

    @classmethod
    def of(cls, account: Account) -> AccountView:
        return cls(*(getattr(account, field.name) for field in fields(cls)))

    @classmethod
    def of_caller_row(cls, row: Row[Any]) -> AccountView:
        """From a `repository.get_caller` row (the account's id is `account_id` there)."""
        return cls(
            *(row.account_id if f.name == "id" else getattr(row, f.name) for f in fields(cls))
        )


@dataclass(frozen=True, slots=True)
class Caller:
    """Who submits: an API key (`key_id`), or a Studio user (`user_id`, source "studio")."""

    key_id: str | None
    is_test: bool
    account: AccountView
    limits: AccountLimits
    source: str = "api"
    user_id: str | None = None


def limits_for(account: HasLimitOverrides, settings: Settings) -> AccountLimits:
    tier = settings.tiers[Tier(account.tier)]
    return AccountLimits(
        api_access=tier.api_access,
        calls_per_minute=account.calls_per_minute or tier.calls_per_minute,
        concurrent_jobs=account.concurrent_jobs or tier.concurrent_jobs,
        monthly_credits=(
            account.monthly_credits if account.monthly_credits is not None else tier.monthly_credits
        ),
    )


def hash_key(secret: str, key: str) -> str:
    return hmac.new(secret.encode(), key.encode(), hashlib.sha256).hexdigest()


def parse_bearer(header: str | None) -> str:
    if not header:
        raise Unauthorized()
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise Unauthorized()
    return token


def looks_like_key(token: str) -> bool:
    return (
        len(token) == KEY_LENGTH
        and token.startswith((LIVE_PREFIX, TEST_PREFIX))
        and is_base62(token[len(LIVE_PREFIX) :])
    )


def key_hash_from_header(secret: str, authorization: str | None) -> str:
    """The stored hash of the bearer key, once the header is well formed and the token
    looks like one of our keys (401 otherwise, without touching the database)."""
    token = parse_bearer(authorization)
    if not looks_like_key(token):
        raise KeyInvalid()
    return hash_key(secret, token)


def caller_from_row(row: Row[Any] | None, settings: Settings) -> Caller:
    """The caller from a `repository.get_caller` row: 401 for an unknown or revoked key."""
    if row is None:
        raise KeyInvalid()
    if row.revoked_at is not None:
        raise KeyRevoked()
    if row.suspended_at is not None:
        raise AccountSuspended()
    account = AccountView.of_caller_row(row)
    return Caller(row.key_id, row.is_test, account, limits_for(account, settings))


def require_api_access(account: HasLimitOverrides, settings: Settings) -> None:
    if not limits_for(account, settings).api_access:
        raise TierLocked(f"The {account.tier} plan does not include API access.", tier=account.tier)


def check_credit_amount(field: str, value: int, *, minimum: int) -> None:
    if not minimum <= value <= MAX_CREDIT_AMOUNT:
        raise AdminInvalid(field, f"must be a whole number from {minimum} to {MAX_CREDIT_AMOUNT}")


def check_account_name(name: str) -> str:
    if not _ACCOUNT_NAME.match(name):
        raise AdminInvalid(
            "name", "1-100 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def parse_tier(value: str) -> str:
    try:
        return Tier(value.lower()).value
    except ValueError:
        raise AdminInvalid("tier", f"must be one of {', '.join(t.value for t in Tier)}") from None


async def create_account(
    session: AsyncSession,
    *,
    name: str,
    tier: str,
    default_models: list[str],
    opening_credits: int | None = None,
) -> Account:
    """Create an account (no credits yet: its first cycle's grant goes through the ledger,
    `opening_grant`) with the tier's default model allowlist."""
    check_account_name(name)
    tier = parse_tier(tier)
    if opening_credits is not None:
        check_credit_amount("credits", opening_credits, minimum=0)
    if await repository.find_account(session, name) is not None:
        raise AdminConflict(f"An account named {name!r} already exists.")
    now = utcnow()
    account = Account(
        id=new_uuid(),
        name=name,
        tier=tier,
        balance=0,
        held=0,
        cycle_anchor=now,
        cycle_started_at=now,
        cycle_resets_at=add_months(now, 1),
        spent_this_cycle=0,
        granted_this_cycle=0,
        allowed_models=sorted(set(default_models)),
        price_overrides={},
        created_at=now,
        updated_at=now,
    )
    session.add(account)
    await session.flush()
    return account


def opening_grant(account: Account, settings: Settings, opening_credits: int | None) -> int:
    """The first cycle's credits: `opening_credits` when given, else the tier's monthly."""
    if opening_credits is not None:
        return opening_credits
    return limits_for(account, settings).monthly_credits


async def create_key(
    session: AsyncSession, secret: str, account: Account, *, name: str = "", test: bool = False
) -> tuple[ApiKey, str]:
    """Create a key; the plaintext is returned here once and never stored."""
    if len(name) > 100:
        raise AdminInvalid("name", "at most 100 characters")
    plaintext = (TEST_PREFIX if test else LIVE_PREFIX) + base62(KEY_RANDOM_LENGTH)
    key = ApiKey(
        id=new_uuid(),
        account_id=account.id,
        name=name,
        prefix=plaintext[:LISTED_PREFIX_LENGTH],
        key_hash=hash_key(secret, plaintext),
        is_test=test,
        created_at=utcnow(),
        revoked_at=None,
    )
    session.add(key)
    await session.flush()
    return key, plaintext


async def revoke_key(session: AsyncSession, prefix_or_id: str) -> ApiKey:
    keys = await repository.find_keys(session, prefix_or_id)
    if not keys:
        raise AdminNotFound(f"No key with id or prefix {prefix_or_id!r}.")
    if len(keys) > 1:
        raise AdminConflict(
            f"{len(keys)} keys share the prefix {prefix_or_id!r}; revoke by id instead.",
            next="List the account's keys to find the id.",
        )
    key = keys[0]
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        await session.flush()
    return key


async def get_account(session: AsyncSession, name_or_id: str) -> Account:
    account = await repository.find_account(session, name_or_id)
    if account is None:
        raise AdminNotFound(f"No account named {name_or_id!r}.")
    return account


async def update_account(
    session: AsyncSession,
    name_or_id: str,
    *,
    tier: str | None = None,
    calls_per_minute: int | None = None,
    concurrent_jobs: int | None = None,
    monthly_credits: int | None = None,
) -> Account:
    account = await get_account(session, name_or_id)
    account = await repository.lock_account(session, account.id)
    if tier is not None:
        account.tier = parse_tier(tier)
    for field, value, bound in (
        ("calls_per_minute", calls_per_minute, MAX_CALLS_PER_MINUTE),
        ("concurrent_jobs", concurrent_jobs, MAX_CONCURRENT_JOBS),
    ):
        if value is not None:
            if not 1 <= value <= bound:
                raise AdminInvalid(field, f"must be a whole number from 1 to {bound}")
            setattr(account, field, value)
    if monthly_credits is not None:
        check_credit_amount("monthly_credits", monthly_credits, minimum=0)
        account.monthly_credits = monthly_credits
    account.updated_at = utcnow()
    await session.flush()
    return account


async def revoke_account_key(session: AsyncSession, account_id: str, key_id: str) -> ApiKey:
    """Revoke one of the account's own keys; another account's key id is 404 (as unknown)."""
    key = await repository.find_account_key(session, account_id, key_id)
    if key is None:
        raise KeyNotFound()
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        await session.flush()
    return key
