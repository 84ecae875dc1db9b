"""Every number an operator sets is bounded (finding 4 of the fault audit): a value past
its bound is 422 INVALID_PARAMS naming the field and changes nothing, and customers'
submits keep working afterwards. Credits are 64-bit on both databases."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import insert, update

from tests.audit import assert_ledger_consistent
from tests.factories import account_with_key
from vivix.admin import service as admin
from vivix.kit.bounds import (
    MAX_BALANCE,
    MAX_CALLS_PER_MINUTE,
    MAX_CONCURRENT_JOBS,
    MAX_CREDIT_AMOUNT,
    MAX_PRICE_CREDITS,
)
from vivix.kit.clock import utcnow
from vivix.kit.errors import AdminInvalid
from vivix.models import Account, LedgerEntry
from vivix.runtime import Runtime
from vivix.settings import SettingsError, load_settings

TOKEN = "operator-token-for-the-bounds-tests-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
IMAGE = {"model": "vivix-local-image", "prompt": "a lighthouse in fog"}
HUGE = (2**63, 10**30, -1)


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {"admin_token": TOKEN}


def assert_invalid(response: httpx.Response, field: str) -> None:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "INVALID_PARAMS"
    assert body["field"] == field, body


async def account_state(client: httpx.AsyncClient, name: str) -> dict[str, Any]:
    response = await client.get(f"/admin/v1/accounts/{name}", headers=ADMIN)
    assert response.status_code == 200
    state: dict[str, Any] = response.json()
    state.pop("keys", None)
    return state


async def test_out_of_range_numbers_are_refused_and_change_nothing(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime)
    before = await account_state(client, acct.name)
    path = f"/admin/v1/accounts/{acct.name}"
    for value in (*HUGE, MAX_CREDIT_AMOUNT + 1):
        assert_invalid(
            await client.post(f"{path}/credits", json={"amount": value}, headers=ADMIN), "amount"
        )
        assert_invalid(
            await client.post(
                "/admin/v1/accounts",
                json={"name": f"n{value % 97}", "credits": value},
                headers=ADMIN,
            ),
            "credits",
        )
        assert_invalid(
            await client.patch(path, json={"monthly_credits": value}, headers=ADMIN),
            "monthly_credits",
        )
    for field, bound in (
        ("calls_per_minute", MAX_CALLS_PER_MINUTE),
        ("concurrent_jobs", MAX_CONCURRENT_JOBS),
    ):
        for value in (*HUGE, bound + 1, 0):
            assert_invalid(await client.patch(path, json={field: value}, headers=ADMIN), field)
    for row in (
        {"credits": 10**21},
        {"credits": MAX_PRICE_CREDITS + 1},
        {"credits": 1, "per_second": 2**63},
        {"credits": -1},
    ):
        assert_invalid(
            await client.put(
                f"{path}/pricing/vivix-local-image", json={"rows": [row]}, headers=ADMIN
            ),
            "rows",
        )
    assert await account_state(client, acct.name) == before
    listed = (await client.get("/admin/v1/accounts", headers=ADMIN)).json()["data"]
    assert [a["name"] for a in listed] == [acct.name]
    submitted = await client.post("/api/v1/generate", json=IMAGE, headers=acct.headers)
    assert submitted.status_code == 201, submitted.text
    await assert_ledger_consistent(runtime)


async def test_the_largest_accepted_values_work_end_to_end(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime, credits=0)
    path = f"/admin/v1/accounts/{acct.name}"
    changed = await client.patch(
        path,
        json={
            "calls_per_minute": MAX_CALLS_PER_MINUTE,
            "concurrent_jobs": MAX_CONCURRENT_JOBS,
            "monthly_credits": MAX_CREDIT_AMOUNT,
        },
        headers=ADMIN,
    )
    assert changed.status_code == 200, changed.text
    # Past 2^31 (a 32-bit column's limit) and 2^32: the money columns are 64-bit.
    for _ in range(3):
        granted = await client.post(
            f"{path}/credits", json={"amount": MAX_CREDIT_AMOUNT}, headers=ADMIN
        )
        assert granted.status_code == 200, granted.text
    assert granted.json()["balance"] == 3 * MAX_CREDIT_AMOUNT
    priced = await client.put(
        f"{path}/pricing/vivix-local-image",
        json={"rows": [{"credits": MAX_PRICE_CREDITS}]},
        headers=ADMIN,
    )
    assert priced.status_code == 200, priced.text
    submitted = await client.post(
        "/api/v1/generate", json={**IMAGE, "number_results": 4}, headers=acct.headers
    )
    assert submitted.status_code == 201, submitted.text
    assert submitted.json()["credits_estimate"] == 4 * MAX_PRICE_CREDITS
    balance = 3 * MAX_CREDIT_AMOUNT - 4 * MAX_PRICE_CREDITS
    assert submitted.headers["x-credits-balance"] == str(balance)
    assert submitted.headers["x-ratelimit-limit"] == str(MAX_CALLS_PER_MINUTE)
    credits = (await client.get("/api/v1/credits", headers=acct.headers)).json()
    assert (credits["balance"], credits["held"]) == (balance, 4 * MAX_PRICE_CREDITS)
    await assert_ledger_consistent(runtime)


async def test_a_grant_past_the_wallet_bound_is_refused(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime, credits=0)
    # A wallet already near its bound (more than any one adjustment may move): written
    # straight into the tables, balance and ledger agreeing.
    async with runtime.db.transaction() as session:
        await session.execute(
            update(Account).where(Account.id == acct.id).values(balance=MAX_BALANCE - 10)
        )
        await session.execute(
            insert(LedgerEntry).values(
                account_id=acct.id,
                kind="adjustment",
                amount=MAX_BALANCE - 10,
                reason="test setup",
                created_at=utcnow(),
            )
        )
    refused = await client.post(
        f"/admin/v1/accounts/{acct.name}/credits", json={"amount": 11}, headers=ADMIN
    )
    assert_invalid(refused, "amount")
    assert "at most" in refused.json()["reason"]
    ok = await client.post(
        f"/admin/v1/accounts/{acct.name}/credits", json={"amount": 10}, headers=ADMIN
    )
    assert ok.json()["balance"] == MAX_BALANCE
    await assert_ledger_consistent(runtime)


async def test_the_service_refuses_what_the_http_schema_would_have(runtime: Runtime) -> None:
    """The CLI calls the service directly: the bounds hold there too."""
    acct = await account_with_key(runtime)
    with pytest.raises(AdminInvalid) as grant:
        await admin.grant_credits(runtime, acct.name, 2**63)
    assert grant.value.extra["field"] == "amount"
    with pytest.raises(AdminInvalid) as update:
        await admin.update_account(runtime, acct.name, calls_per_minute=10**30)
    assert update.value.extra["field"] == "calls_per_minute"
    with pytest.raises(AdminInvalid) as create:
        await admin.create_account(runtime, "rich", "pro", 2**63)
    assert create.value.extra["field"] == "credits"
    with pytest.raises(AdminInvalid) as rows:
        await admin.set_price_override(
            runtime, acct.name, "vivix-local-image", rows=[{"credits": 10**21}]
        )
    assert rows.value.extra["field"] == "rows"


def test_tier_defaults_in_settings_are_bounded() -> None:
    with pytest.raises(SettingsError, match="VIVIX_TIERS__PRO__CALLS_PER_MINUTE"):
        load_settings(tiers={"pro": {"calls_per_minute": 10**30}})
    with pytest.raises(SettingsError, match="VIVIX_TIERS__PRO__MONTHLY_CREDITS"):
        load_settings(tiers={"pro": {"monthly_credits": 2**63}})
    with pytest.raises(SettingsError, match="VIVIX_TIERS__ULTIMATE__CONCURRENT_JOBS"):
        load_settings(tiers={"ultimate": {"concurrent_jobs": MAX_CONCURRENT_JOBS + 1}})
