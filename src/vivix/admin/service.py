"""Operator operations, shared by the CLI and the /admin/v1 API. Each opens its own
transaction (these are the boundary) and returns plain JSON-ready data.

Every change is recorded in the operator audit log (who, what, the changed fields before
and after) in the same transaction as the change itself: no change without its entry,
no entry for a change that was refused."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession

from vivix.accounts import repository as accounts_repository
from vivix.accounts import service as accounts
from vivix.admin import repository
from vivix.billing import repository as billing_repository
from vivix.billing.audit import audit_money
from vivix.catalog import pricing
from vivix.catalog.schemas import PricingRow
from vivix.generations import repository as generations_repository
from vivix.generations.schemas import generation_out
from vivix.kit.clock import iso, utcnow
from vivix.kit.errors import AdminInvalid, AdminNotFound
from vivix.kit.ids import uuid7
from vivix.kit.pagination import decode_cursor, encode_cursor
from vivix.models import Account, AdminAuditEntry, ApiKey, User
from vivix.providers.circuits import route_key
from vivix.providers.registry import LOCAL, is_configured
from vivix.users import passwords
from vivix.users import repository as users_repository
from vivix.users import service as users

if TYPE_CHECKING:
    from vivix.runtime import Runtime

DEMO_ACCOUNT = "demo"
DEMO_EMAIL = "demo@vivix.local"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who asks for an operator action, as the audit log names them:
    "admin-token@<client address>", "cli:<user>@<host>", "studio:<email>", "system"."""

    name: str
    request_id: str | None = None


SYSTEM = Actor("system")


def record_admin_action(
    session: AsyncSession,
    actor: Actor,
    action: str,
    *,
    target_type: str,
    target_id: str,
    account_id: str | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Append one audit entry in the caller's transaction (the change's own)."""
    repository.add_audit_entry(
        session,
        AdminAuditEntry(
            id=uuid7(),
            created_at=utcnow(),
            actor=actor.name[:200],
            action=action,
            target_type=target_type,
            target_id=target_id[:200],
            account_id=account_id,
            before=before,
            after=after,
            details=details,
            request_id=actor.request_id,
        ),
    )


def account_settings(account: Account) -> dict[str, Any]:
    """What an operator can change on an account, as the audit log shows it."""
    return {
        "name": account.name,
        "tier": account.tier,
        "calls_per_minute": account.calls_per_minute,
        "concurrent_jobs": account.concurrent_jobs,
        "monthly_credits": account.monthly_credits,
        "allowed_models": sorted(account.allowed_models),
        "price_overrides": dict(account.price_overrides),
        "balance": account.balance,
    }


def changed_fields(
    before: dict[str, Any], after: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    keys = [k for k in after if before.get(k) != after[k]]
    return {k: before.get(k) for k in keys}, {k: after[k] for k in keys}


def _record_account_change(
    session: AsyncSession,
    actor: Actor,
    action: str,
    account: Account,
    before: dict[str, Any],
    details: dict[str, Any] | None = None,
) -> None:
    old, new = changed_fields(before, account_settings(account))
    record_admin_action(
        session,
        actor,
        action,
        target_type="account",
        target_id=account.id,
        account_id=account.id,
        before=old,
        after=new,
        details=details,
    )


def account_out(account: Account, runtime: Runtime) -> dict[str, Any]:
    limits = accounts.limits_for(account, runtime.settings)
    return {
        "id": account.id,
        "name": account.name,
        "tier": account.tier,
        "api_access": limits.api_access,
        "calls_per_minute": limits.calls_per_minute,
        "concurrent_jobs": limits.concurrent_jobs,
        "monthly_credits": limits.monthly_credits,
        "overrides": {
            "calls_per_minute": account.calls_per_minute,
            "concurrent_jobs": account.concurrent_jobs,
            "monthly_credits": account.monthly_credits,
        },
        "balance": account.balance,
        "held": account.held,
        "active_jobs": account.active_jobs,
        "cycle_resets_at": iso(account.cycle_resets_at),
        "spent_this_cycle": account.spent_this_cycle,
        "granted_this_cycle": account.granted_this_cycle,
        "allowed_models": sorted(account.allowed_models),
        "price_overrides": account.price_overrides,
        "created_at": iso(account.created_at),
        "suspended_at": iso(account.suspended_at),
    }


def key_out(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "account_id": key.account_id,
        "name": key.name,
        "prefix": key.prefix,
        "test": key.is_test,
        "created_at": iso(key.created_at),
        "revoked_at": iso(key.revoked_at),
    }


async def create_account(
    runtime: Runtime,
    name: str,
    tier: str = "pro",
    credits: int | None = None,
    *,
    actor: Actor = SYSTEM,
) -> dict[str, Any]:
    tier = accounts.parse_tier(tier)
    async with runtime.db.transaction() as session:
        account = await accounts.create_account(
            session,
            name=name,
            tier=tier,
            default_models=runtime.catalog.default_allowlist(tier),
            opening_credits=credits,
        )
        await runtime.ledger.grant_cycle(
            session,
            account.id,
            accounts.opening_grant(account, runtime.settings, credits),
            cycle_started_at=account.cycle_started_at,
        )
        await session.refresh(account)
        record_admin_action(
            session,
            actor,
            "account.create",
            target_type="account",
            target_id=account.id,
            account_id=account.id,
            after=account_settings(account),
            details={"opening_credits": credits},
        )
    return account_out(account, runtime)


async def show_account(runtime: Runtime, name_or_id: str) -> dict[str, Any]:
    async with runtime.db.read() as session:
        account = await accounts.get_account(session, name_or_id)
        keys = await accounts_repository.list_keys(session, account.id)
        ledger_total = await billing_repository.ledger_sum(session, account.id)
    out = account_out(account, runtime)
    out["keys"] = [key_out(k) for k in keys]
    out["ledger_sum"] = ledger_total
    return out


async def list_accounts(runtime: Runtime) -> list[dict[str, Any]]:
    async with runtime.db.read() as session:
        return [account_out(a, runtime) for a in await accounts_repository.list_accounts(session)]


async def update_account(
    runtime: Runtime,
    name_or_id: str,
    *,
    tier: str | None = None,
    calls_per_minute: int | None = None,
    concurrent_jobs: int | None = None,
    monthly_credits: int | None = None,
    actor: Actor = SYSTEM,
) -> dict[str, Any]:
    async with runtime.db.transaction() as session:
        found = await accounts.get_account(session, name_or_id)
        before = account_settings(await accounts_repository.lock_account(session, found.id))
        account = await accounts.update_account(
            session,
            name_or_id,
            tier=tier,
            calls_per_minute=calls_per_minute,
            concurrent_jobs=concurrent_jobs,
            monthly_credits=monthly_credits,
        )
        _record_account_change(session, actor, "account.update", account, before)
    return account_out(account, runtime)


async def create_key(
    runtime: Runtime,
    account_name: str,
    name: str = "",
    test: bool = False,
    *,
    actor: Actor = SYSTEM,
) -> dict[str, Any]:
    async with runtime.db.transaction() as session:
        account = await accounts.get_account(session, account_name)
        key, plaintext = await accounts.create_key(
            session, runtime.secret, account, name=name, test=test
        )
        record_admin_action(
            session,
            actor,
            "key.create",
            target_type="api_key",
            target_id=key.id,
            account_id=account.id,
            after={"prefix": key.prefix, "name": key.name, "test": key.is_test},
        )
    return {**key_out(key), "key": plaintext}


async def list_keys(runtime: Runtime, account_name: str) -> list[dict[str, Any]]:
    """An account's keys, revoked ones included (prefixes only: keys are shown once)."""
    async with runtime.db.read() as session:
        account = await accounts.get_account(session, account_name)
        return [key_out(k) for k in await accounts_repository.list_keys(session, account.id)]


async def revoke_key(
    runtime: Runtime, prefix_or_id: str, *, actor: Actor = SYSTEM
) -> dict[str, Any]:
    async with runtime.db.transaction() as session:
        found = await accounts_repository.find_keys(session, prefix_or_id)
        # Revoking twice is allowed and changes nothing; the log says so (before == after).
        revoked_before = found[0].revoked_at if len(found) == 1 else None
        key = await accounts.revoke_key(session, prefix_or_id)
        record_admin_action(
            session,
            actor,
            "key.revoke",
            target_type="api_key",
            target_id=key.id,
            account_id=key.account_id,
            before={"prefix": key.prefix, "revoked_at": iso(revoked_before)},
            after={"prefix": key.prefix, "revoked_at": iso(key.revoked_at)},
        )
    return key_out(key)


async def grant_credits(
    runtime: Runtime,
    account_name: str,
    amount: int,
    reason: str | None = None,
    *,
    actor: Actor = SYSTEM,
) -> dict[str, Any]:
    """A one-off grant (counts toward the cycle's granted credits)."""

    async def grant(session: AsyncSession, account_id: str) -> None:
        await runtime.ledger.grant(session, account_id, amount, reason)

    return await _move_credits(
        runtime, account_name, grant, actor, "credits.grant", {"amount": amount, "reason": reason}
    )


async def adjust_credits(
    runtime: Runtime,
    account_name: str,
    amount: int,
    reason: str,
    *,
    actor: Actor = SYSTEM,
) -> dict[str, Any]:
    """A signed correction (an adjustment entry); never takes the balance below zero."""
    if not reason.strip():
        raise AdminInvalid("reason", "an adjustment needs a reason")

    async def adjust(session: AsyncSession, account_id: str) -> None:
        await runtime.ledger.adjust(session, account_id, amount, reason)

    return await _move_credits(
        runtime, account_name, adjust, actor, "credits.adjust", {"amount": amount, "reason": reason}
    )


async def _move_credits(
    runtime: Runtime,
    account_name: str,
    move: Callable[[AsyncSession, str], Awaitable[None]],
    actor: Actor,
    action: str,
    details: dict[str, Any],
) -> dict[str, Any]:
    """One ledger operation on the account and its audit entry, in one transaction."""
    async with runtime.db.transaction() as session:
        found = await accounts.get_account(session, account_name)
        before = account_settings(await accounts_repository.lock_account(session, found.id))
        await move(session, found.id)
        account = await accounts_repository.lock_account(session, found.id)
        _record_account_change(session, actor, action, account, before, details)
    return account_out(account, runtime)


async def set_suspended(
    runtime: Runtime, account_name: str, *, suspended: bool, actor: Actor = SYSTEM
) -> dict[str, Any]:
    """Suspend (keys answer 403 ACCOUNT_SUSPENDED, Studio sessions end, sign-in refused) or
    reinstate an account. Nothing is deleted; running generations finish and settle."""
    async with runtime.db.transaction() as session:
        found = await accounts.get_account(session, account_name)
        account = await accounts_repository.lock_account(session, found.id)
        was = iso(account.suspended_at)
        now = utcnow()
        account.suspended_at = now if suspended else None
        account.updated_at = now
        if suspended:
            await users_repository.revoke_account_sessions(session, account.id, now)
        await session.flush()
        record_admin_action(
            session,
            actor,
            "account.suspend" if suspended else "account.reinstate",
            target_type="account",
            target_id=account.id,
            account_id=account.id,
            before={"suspended_at": was},
            after={"suspended_at": iso(account.suspended_at)},
        )
    return account_out(account, runtime)


async def set_models(
    runtime: Runtime,
    account_name: str,
    slugs: list[str],
    *,
    allow: bool,
    actor: Actor = SYSTEM,
) -> dict[str, Any]:
    unknown = [s for s in slugs if runtime.catalog.get(s) is None]
    if unknown and allow:
        raise AdminInvalid("slug", f"unknown model(s): {', '.join(unknown)}")
    async with runtime.db.transaction() as session:
        found = await accounts.get_account(session, account_name)
        account = await accounts_repository.lock_account(session, found.id)
        before = account_settings(account)
        current = set(account.allowed_models)
        current = current | set(slugs) if allow else current - set(slugs)
        account.allowed_models = sorted(current)
        account.updated_at = utcnow()
        await session.flush()
        action = "models.allow" if allow else "models.deny"
        _record_account_change(session, actor, action, account, before, {"slugs": sorted(slugs)})
    return account_out(account, runtime)


async def set_price_override(
    runtime: Runtime,
    account_name: str,
    slug: str,
    *,
    factor: str | None = None,
    rows: list[dict[str, Any]] | None = None,
    clear: bool = False,
    actor: Actor = SYSTEM,
) -> dict[str, Any]:
    model = runtime.catalog.get(slug)
    if model is None:
        raise AdminInvalid("slug", f"unknown model {slug!r}")
    if not clear and (factor is None) == (rows is None):
        raise AdminInvalid("factor", "give exactly one of a factor or replacement rows (or clear)")
    stored: dict[str, Any] | None = None
    if not clear:
        try:
            override = pricing.PriceOverride(
                factor=factor,
                rows=[PricingRow.model_validate(r) for r in rows] if rows is not None else None,
            )
        except ValueError as exc:
            raise AdminInvalid("factor" if factor is not None else "rows", str(exc)) from None
        if override.rows is not None:
            try:
                pricing.check_coverage(model.spec, override.rows)
            except ValueError as exc:
                raise AdminInvalid("rows", str(exc)) from None
        stored = override.model_dump(exclude_none=True)
    async with runtime.db.transaction() as session:
        found = await accounts.get_account(session, account_name)
        account = await accounts_repository.lock_account(session, found.id)
        before = account_settings(account)
        overrides = dict(account.price_overrides)
        if stored is None:
            overrides.pop(slug, None)
        else:
            overrides[slug] = stored
        account.price_overrides = overrides
        account.updated_at = utcnow()
        await session.flush()
        action = "pricing.clear" if clear else "pricing.override"
        _record_account_change(session, actor, action, account, before, {"model": slug})
    out = account_out(account, runtime)
    low, high = pricing.credits_band(model.spec, pricing.parse_override(stored))
    out["credits_band"] = {"slug": slug, "min": low, "max": high}
    return out


def audit_entry_out(entry: AdminAuditEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "created_at": iso(entry.created_at),
        "actor": entry.actor,
        "action": entry.action,
        "target_type": entry.target_type,
        "target_id": entry.target_id,
        "account_id": entry.account_id,
        "before": entry.before,
        "after": entry.after,
        "details": entry.details,
        "request_id": entry.request_id,
    }


async def list_audit_log(
    runtime: Runtime,
    *,
    limit: int = 20,
    cursor: str | None = None,
    account: str | None = None,
    action: str | None = None,
    actor: str | None = None,
) -> dict[str, Any]:
    """The operator audit log, newest first, cursor-paginated like the public API."""
    before_id = decode_cursor(cursor) if cursor else None
    async with runtime.db.read() as session:
        account_id = (await accounts.get_account(session, account)).id if account else None
        rows = await repository.list_audit_entries(
            session,
            limit=limit,
            before_id=before_id,
            account_id=account_id,
            action=action,
            actor=actor,
        )
    has_more = len(rows) > limit
    rows = rows[:limit]
    return {
        "data": [audit_entry_out(r) for r in rows],
        "next_cursor": encode_cursor(rows[-1].id) if has_more else None,
        "has_more": has_more,
    }


async def audit(runtime: Runtime) -> dict[str, Any]:
    """The money audit (`billing.audit`): `ok` and every offending row."""
    async with runtime.db.read() as session:
        report = await audit_money(session)
    return report.as_dict()


async def show_generation(runtime: Runtime, generation_id: str) -> dict[str, Any]:
    """One generation as operators see it: what the customer sees plus the engine's
    state, the operator-only error detail and every attempt's error."""
    async with runtime.db.read() as session:
        generation = await generations_repository.get_generation(session, generation_id)
    if generation is None:
        raise AdminNotFound(f"No generation with id {generation_id!r}.")
    return {
        **generation_out(generation, output_url=runtime.storage.url_for),
        "account_id": generation.account_id,
        "api_key_id": generation.api_key_id,
        "test": generation.is_test,
        "error_code": generation.error_code,
        "error_message": generation.error_message,
        "last_error": generation.last_error,
        "attempts": generation.attempts,
        "attempt_errors": generation.attempt_errors or [],
        "provider": generation.provider,
        "route_index": generation.route_index,
        "upstream_handle": generation.upstream_handle,
        "lease_owner": generation.lease_owner,
        "lease_expires_at": iso(generation.lease_expires_at),
        "run_after": iso(generation.run_after),
        "started_at": iso(generation.started_at),
        "price_snapshot": generation.price_snapshot,
    }


async def catalog_list(runtime: Runtime) -> list[dict[str, Any]]:
    """Every model with its routes and whether each can take work now (credentials
    configured and circuit closed)."""
    open_routes = await runtime.circuits.open_routes()
    models = []
    for model in runtime.catalog.all():
        low, high = pricing.credits_band(model.spec, None)
        routes = []
        for r in model.spec.routes:
            configured = r.provider == LOCAL or is_configured(r.provider, runtime.settings)
            open_until = open_routes.get(route_key(r.provider, r.upstream_model))
            routes.append(
                {
                    "provider": r.provider,
                    "upstream_model": r.upstream_model,
                    "configured": configured,
                    "circuit_open_until": iso(open_until),
                    "available": configured and open_until is None,
                }
            )
        models.append(
            {
                "slug": model.slug,
                "name": model.spec.name,
                "category": model.spec.category,
                "credits_band": {"min": low, "max": high},
                "default_tiers": model.spec.default_tiers,
                "available": any(r["available"] for r in routes),
                "routes": routes,
            }
        )
    return models


def user_out(user: User, account_name: str) -> dict[str, Any]:
    return {
        "user_id": user.id,
        "email": user.email,
        "account_id": user.account_id,
        "account": account_name,
        "operator": user.is_operator,
        "created_at": iso(user.created_at),
        "last_sign_in_at": iso(user.last_sign_in_at),
    }


async def list_users(runtime: Runtime, query: str = "") -> list[dict[str, Any]]:
    async with runtime.db.read() as session:
        rows = await users_repository.list_users(session, query)
    return [user_out(row.User, row.account_name) for row in rows]


async def list_account_users(runtime: Runtime, account_id: str) -> list[dict[str, Any]]:
    async with runtime.db.read() as session:
        account = await accounts.get_account(session, account_id)
        users = await users_repository.list_account_users(session, account.id)
    return [user_out(user, account.name) for user in users]


@dataclass(frozen=True, slots=True)
class DemoAccess:
    key: str
    email: str
    password: str


async def ensure_demo_account(runtime: Runtime) -> DemoAccess | None:
    """On an empty database: a pro demo account, one live key and a Studio user (an
    operator, so one person can try every page), returned once."""
    async with runtime.db.read() as session:
        if await accounts_repository.count_accounts(session):
            return None
    await create_account(runtime, DEMO_ACCOUNT, "pro")
    created = await create_key(runtime, DEMO_ACCOUNT, name="demo")
    user = await create_user(runtime, DEMO_EMAIL, account=DEMO_ACCOUNT, operator=True)
    return DemoAccess(key=created["key"], email=user["email"], password=user["password"])


async def create_user(
    runtime: Runtime,
    email: str,
    *,
    account: str | None = None,
    operator: bool = False,
    password: str | None = None,
    actor: Actor = SYSTEM,
) -> dict[str, Any]:
    """A Studio user in `account` (or in a new free account of their own). Without a
    `password` one is generated and returned (shown once); a given one is not echoed."""
    chosen = password if password is not None else passwords.generate_password()
    async with runtime.db.transaction() as session:
        user, owner = await users.create_user(
            session, runtime, email=email, password=chosen, account_name=account, operator=operator
        )
        record_admin_action(
            session,
            actor,
            "user.create",
            target_type="user",
            target_id=user.id,
            account_id=owner.id,
            after={"email": user.email, "operator": user.is_operator, "account": owner.name},
        )
    return {
        "user_id": user.id,
        "email": user.email,
        "account_id": owner.id,
        "account": owner.name,
        "operator": user.is_operator,
        "password": chosen if password is None else None,
    }
