"""Operator operations, shared by the CLI and the /admin/v1 API. Each opens its own
transaction (these are the boundary) and returns plain JSON-ready data."""

from __future__ import annotations

from typing import Any

from vivix.accounts import repository as accounts_repository
from vivix.accounts import service as accounts
from vivix.billing import repository as billing_repository
from vivix.billing import service as billing
from vivix.catalog import pricing
from vivix.catalog.schemas import PricingRow
from vivix.kit.clock import iso, utcnow
from vivix.kit.errors import AdminInvalid
from vivix.kit.runtime import Runtime
from vivix.models import Account, ApiKey
from vivix.providers.circuits import route_key
from vivix.providers.registry import LOCAL, is_configured

DEMO_ACCOUNT = "demo"


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
    runtime: Runtime, name: str, tier: str = "pro", credits: int | None = None
) -> dict[str, Any]:
    tier = accounts.parse_tier(tier)
    async with runtime.db.transaction() as session:
        account = await accounts.create_account(
            session,
            runtime.settings,
            name=name,
            tier=tier,
            default_models=runtime.catalog.default_allowlist(tier),
            opening_credits=credits,
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


async def update_account(runtime: Runtime, name_or_id: str, **changes: Any) -> dict[str, Any]:
    async with runtime.db.transaction() as session:
        account = await accounts.update_account(session, name_or_id, **changes)
    return account_out(account, runtime)


async def create_key(
    runtime: Runtime, account_name: str, name: str = "", test: bool = False
) -> dict[str, Any]:
    async with runtime.db.transaction() as session:
        account = await accounts.get_account(session, account_name)
        key, plaintext = await accounts.create_key(
            session, runtime.secret, account, name=name, test=test
        )
    return {**key_out(key), "key": plaintext}


async def list_keys(runtime: Runtime, account_name: str) -> list[dict[str, Any]]:
    """An account's keys, revoked ones included (prefixes only: keys are shown once)."""
    async with runtime.db.read() as session:
        account = await accounts.get_account(session, account_name)
        return [key_out(k) for k in await accounts_repository.list_keys(session, account.id)]


async def revoke_key(runtime: Runtime, prefix_or_id: str) -> dict[str, Any]:
    async with runtime.db.transaction() as session:
        key = await accounts.revoke_key(session, prefix_or_id)
    return key_out(key)


async def grant_credits(
    runtime: Runtime, account_name: str, amount: int, reason: str | None = None
) -> dict[str, Any]:
    async with runtime.db.transaction() as session:
        found = await accounts.get_account(session, account_name)
        account = await accounts_repository.lock_account(session, found.id)
        billing.grant(session, account, amount, reason)
        await session.flush()
    return account_out(account, runtime)


async def set_models(
    runtime: Runtime, account_name: str, slugs: list[str], *, allow: bool
) -> dict[str, Any]:
    unknown = [s for s in slugs if runtime.catalog.get(s) is None]
    if unknown and allow:
        raise AdminInvalid("slug", f"unknown model(s): {', '.join(unknown)}")
    async with runtime.db.transaction() as session:
        found = await accounts.get_account(session, account_name)
        account = await accounts_repository.lock_account(session, found.id)
        current = set(account.allowed_models)
        current = current | set(slugs) if allow else current - set(slugs)
        account.allowed_models = sorted(current)
        account.updated_at = utcnow()
        await session.flush()
    return account_out(account, runtime)


async def set_price_override(
    runtime: Runtime,
    account_name: str,
    slug: str,
    *,
    factor: str | None = None,
    rows: list[dict[str, Any]] | None = None,
    clear: bool = False,
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
        overrides = dict(account.price_overrides)
        if stored is None:
            overrides.pop(slug, None)
        else:
            overrides[slug] = stored
        account.price_overrides = overrides
        account.updated_at = utcnow()
        await session.flush()
    out = account_out(account, runtime)
    low, high = pricing.credits_band(model.spec, pricing.parse_override(stored))
    out["credits_band"] = {"slug": slug, "min": low, "max": high}
    return out


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


async def ensure_demo_account(runtime: Runtime) -> str | None:
    """On an empty database: a pro demo account and one live key (returned once)."""
    async with runtime.db.read() as session:
        if await accounts_repository.count_accounts(session):
            return None
    await create_account(runtime, DEMO_ACCOUNT, "pro")
    created = await create_key(runtime, DEMO_ACCOUNT, name="demo")
    key: str = created["key"]
    return key
