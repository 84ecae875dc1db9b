"""The operator's HTTP API under /admin/v1 (API.md §6), and that what it changes takes
effect on the customer API at once."""

from __future__ import annotations

import dataclasses
from typing import Any

import httpx
import pytest

from tests.audit import assert_ledger_consistent
from tests.factories import AccountWithKey
from vivix.app import create_app
from vivix.billing import repository as billing_repository
from vivix.runtime import Runtime

TOKEN = "operator-token-0123456789-abcdefghij"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
IMAGE = {"model": "vivix-local-image", "prompt": "a lighthouse in fog"}


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    # Refused-token tests send many wrong tokens; throttling has its own tests.
    return {
        "admin_token": TOKEN,
        "providers": {"fal": {"api_key": "test-fal-key"}},
        "admin": {"failed_attempts_per_minute": 1000},
    }


async def create_account(client: httpx.AsyncClient, name: str, **fields: Any) -> dict[str, Any]:
    response = await client.post("/admin/v1/accounts", json={"name": name, **fields}, headers=ADMIN)
    assert response.status_code == 201, response.text
    account: dict[str, Any] = response.json()
    return account


async def create_key(client: httpx.AsyncClient, account: str, **fields: Any) -> AccountWithKey:
    response = await client.post(f"/admin/v1/accounts/{account}/keys", json=fields, headers=ADMIN)
    assert response.status_code == 201, response.text
    created = response.json()
    return AccountWithKey(created["account_id"], account, created["key"])


def assert_admin_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == code
    assert body["message"]
    assert body["next"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body


# -- the admin token ---------------------------------------------------------------------


async def test_admin_api_refuses_a_missing_or_wrong_token(client: httpx.AsyncClient) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        {"Authorization": "Bearer "},
    ):
        for method, path in (
            ("GET", "/admin/v1/accounts"),
            ("POST", "/admin/v1/accounts"),
            ("GET", "/admin/v1/catalog"),
        ):
            response = await client.request(method, path, json={"name": "x"}, headers=headers)
            assert_admin_error(response, 401, "UNAUTHORIZED")
    listed = await client.get("/admin/v1/accounts", headers=ADMIN)
    assert listed.json() == {"data": []}  # nothing was created by the refused calls


async def test_admin_api_is_off_when_no_token_is_set(runtime: Runtime) -> None:
    unset = dataclasses.replace(
        runtime, settings=runtime.settings.model_copy(update={"admin_token": None})
    )
    app = create_app(unset.settings, runtime=unset)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        for headers in ({}, ADMIN, {"Authorization": "Bearer "}):
            response = await http.get("/admin/v1/accounts", headers=headers)
            body = assert_admin_error(response, 401, "UNAUTHORIZED")
            assert "VIVIX_ADMIN_TOKEN" in body["message"] + body["next"]


async def test_customer_keys_do_not_open_the_admin_api(client: httpx.AsyncClient) -> None:
    await create_account(client, "cust")
    acct = await create_key(client, "cust")
    response = await client.get("/admin/v1/accounts", headers=acct.headers)
    assert_admin_error(response, 401, "UNAUTHORIZED")


# -- accounts ------------------------------------------------------------------------------


async def test_create_show_and_list_accounts(client: httpx.AsyncClient) -> None:
    pro = await create_account(client, "studio-a")
    assert pro["name"] == "studio-a"
    assert pro["tier"] == "pro"
    assert pro["balance"] == 15000
    assert pro["api_access"] is True
    assert pro["calls_per_minute"] == 240
    assert pro["concurrent_jobs"] == 5
    assert "vivix-local-image" in pro["allowed_models"]
    gift = await create_account(client, "studio-b", tier="ultimate", credits=42)
    assert gift["tier"] == "ultimate"
    assert gift["balance"] == 42
    assert gift["calls_per_minute"] == 600
    assert gift["concurrent_jobs"] == 20

    for ref in ("studio-b", gift["id"]):
        shown = await client.get(f"/admin/v1/accounts/{ref}", headers=ADMIN)
        assert shown.status_code == 200
        body = shown.json()
        assert body["id"] == gift["id"]
        assert body["ledger_sum"] == body["balance"] == 42
        assert body["keys"] == []

    listed = (await client.get("/admin/v1/accounts", headers=ADMIN)).json()["data"]
    assert [a["name"] for a in listed] == ["studio-a", "studio-b"]


async def test_account_creation_errors(client: httpx.AsyncClient) -> None:
    await create_account(client, "taken")
    duplicate = await client.post("/admin/v1/accounts", json={"name": "taken"}, headers=ADMIN)
    assert_admin_error(duplicate, 409, "CONFLICT")
    missing = await client.get("/admin/v1/accounts/nobody", headers=ADMIN)
    assert_admin_error(missing, 404, "NOT_FOUND")
    for body, field in [
        ({}, "name"),
        ({"name": "ok", "tier": "gold"}, "tier"),
        ({"name": "ok", "credits": -1}, "credits"),
        ({"name": "bad name!"}, "name"),
        ({"name": ""}, "name"),
        ({"name": "ok", "colour": "red"}, "colour"),
        ({"name": 5}, "name"),
    ]:
        response = await client.post("/admin/v1/accounts", json=body, headers=ADMIN)
        error = assert_admin_error(response, 422, "INVALID_PARAMS")
        assert error["field"] == field, body
        assert error["reason"]
    bad_json = await client.post(
        "/admin/v1/accounts",
        content=b"{nope",
        headers={**ADMIN, "Content-Type": "application/json"},
    )
    assert_admin_error(bad_json, 400, "INVALID_JSON")
    listed = (await client.get("/admin/v1/accounts", headers=ADMIN)).json()["data"]
    assert [a["name"] for a in listed] == ["taken"]


async def test_updated_limits_take_effect_on_the_customer_api(client: httpx.AsyncClient) -> None:
    await create_account(client, "tuned")
    acct = await create_key(client, "tuned")
    first = await client.get("/api/v1/credits", headers=acct.headers)
    assert first.headers["x-ratelimit-limit"] == "240"

    patched = await client.patch(
        "/admin/v1/accounts/tuned",
        json={"calls_per_minute": 1000, "concurrent_jobs": 1},
        headers=ADMIN,
    )
    assert patched.status_code == 200
    body = patched.json()
    assert body["calls_per_minute"] == 1000
    assert body["concurrent_jobs"] == 1
    assert body["overrides"]["calls_per_minute"] == 1000

    response = await client.get("/api/v1/credits", headers=acct.headers)
    assert response.headers["x-ratelimit-limit"] == "1000"
    assert response.json()["rate_limit"] == {"calls_per_minute": 1000, "concurrent_jobs": 1}
    assert (await client.post("/api/v1/generate", json=IMAGE, headers=acct.headers)).is_success
    busy = await client.post("/api/v1/generate", json=IMAGE, headers=acct.headers)
    assert busy.json()["error"] == "CONCURRENCY_LIMIT"
    assert busy.json()["limit"] == 1


async def test_downgrading_the_tier_locks_the_api_and_upgrading_unlocks_it(
    client: httpx.AsyncClient,
) -> None:
    await create_account(client, "mover")
    acct = await create_key(client, "mover")
    down = await client.patch("/admin/v1/accounts/mover", json={"tier": "free"}, headers=ADMIN)
    assert down.json()["tier"] == "free"
    assert down.json()["api_access"] is False
    locked = await client.get("/api/v1/models", headers=acct.headers)
    assert locked.status_code == 403
    assert locked.json()["error"] == "TIER_LOCKED"
    assert locked.json()["tier"] == "free"
    up = await client.patch("/admin/v1/accounts/mover", json={"tier": "ULTIMATE"}, headers=ADMIN)
    assert up.json()["tier"] == "ultimate"
    models = await client.get("/api/v1/models", headers=acct.headers)
    assert models.status_code == 200
    assert models.json()["rate_limit"] == {"calls_per_minute": 600, "concurrent_jobs": 20}


async def test_bad_account_updates_are_refused(client: httpx.AsyncClient) -> None:
    await create_account(client, "strict")
    for body, field in [
        ({"calls_per_minute": 0}, "calls_per_minute"),
        ({"concurrent_jobs": -1}, "concurrent_jobs"),
        ({"monthly_credits": -5}, "monthly_credits"),
        ({"tier": "platinum"}, "tier"),
        ({"balance": 10**6}, "balance"),
    ]:
        response = await client.patch("/admin/v1/accounts/strict", json=body, headers=ADMIN)
        assert assert_admin_error(response, 422, "INVALID_PARAMS")["field"] == field
    missing = await client.patch("/admin/v1/accounts/ghost", json={"tier": "pro"}, headers=ADMIN)
    assert_admin_error(missing, 404, "NOT_FOUND")
    shown = (await client.get("/admin/v1/accounts/strict", headers=ADMIN)).json()
    assert shown["tier"] == "pro"
    assert shown["calls_per_minute"] == 240


# -- keys ----------------------------------------------------------------------------------


async def test_created_key_is_returned_once_and_works(client: httpx.AsyncClient) -> None:
    await create_account(client, "keyed")
    response = await client.post(
        "/admin/v1/accounts/keyed/keys", json={"name": "ci", "test": True}, headers=ADMIN
    )
    assert response.status_code == 201
    created = response.json()
    assert created["key"].startswith("vvx_test_")
    assert created["prefix"] == created["key"][:15]
    assert created["name"] == "ci"
    shown = await client.get("/admin/v1/accounts/keyed", headers=ADMIN)
    assert created["key"] not in shown.text
    assert [k["prefix"] for k in shown.json()["keys"]] == [created["prefix"]]
    works = await client.get(
        "/api/v1/credits", headers={"Authorization": f"Bearer {created['key']}"}
    )
    assert works.status_code == 200
    missing = await client.post("/admin/v1/accounts/ghost/keys", json={}, headers=ADMIN)
    assert_admin_error(missing, 404, "NOT_FOUND")


async def test_revoked_key_stops_working_at_once(client: httpx.AsyncClient) -> None:
    await create_account(client, "revoker")
    by_prefix = await create_key(client, "revoker")
    by_id = await create_key(client, "revoker")
    keys = (await client.get("/admin/v1/accounts/revoker", headers=ADMIN)).json()["keys"]
    id_of_second = next(k["id"] for k in keys if k["prefix"] == by_id.key[:15])

    for ref, acct in ((by_prefix.key[:15], by_prefix), (id_of_second, by_id)):
        revoked = await client.post(f"/admin/v1/keys/{ref}/revoke", headers=ADMIN)
        assert revoked.status_code == 200
        assert revoked.json()["revoked_at"] is not None
        response = await client.get("/api/v1/credits", headers=acct.headers)
        assert response.json()["error"] == "KEY_REVOKED"
    keys = (await client.get("/admin/v1/accounts/revoker", headers=ADMIN)).json()["keys"]
    assert len(keys) == 2
    assert all(k["revoked_at"] for k in keys)
    missing = await client.post("/admin/v1/keys/vvx_live_nothing/revoke", headers=ADMIN)
    assert_admin_error(missing, 404, "NOT_FOUND")


# -- credits ---------------------------------------------------------------------------------


async def test_granted_credits_reach_the_balance_and_the_ledger(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    account = await create_account(client, "granted", credits=10)
    acct = await create_key(client, "granted")
    response = await client.post(
        "/admin/v1/accounts/granted/credits",
        json={"amount": 500, "reason": "goodwill"},
        headers=ADMIN,
    )
    assert response.status_code == 200
    assert response.json()["balance"] == 510
    assert response.json()["granted_this_cycle"] == 510
    wallet = await client.get("/api/v1/credits", headers=acct.headers)
    assert wallet.json()["balance"] == 510
    assert wallet.headers["x-credits-balance"] == "510"
    async with runtime.db.read() as session:
        entries = await billing_repository.list_entries(session, account["id"])
    newest = entries[0]
    assert (newest.kind, newest.amount, newest.reason) == ("grant", 500, "goodwill")
    for body, field in [
        ({"amount": 0}, "amount"),
        ({"amount": -5}, "amount"),
        ({"amount": "lots"}, "amount"),
        ({}, "amount"),
        ({"amount": 5, "reason": "r" * 501}, "reason"),
    ]:
        refused = await client.post("/admin/v1/accounts/granted/credits", json=body, headers=ADMIN)
        assert assert_admin_error(refused, 422, "INVALID_PARAMS")["field"] == field
    shown = (await client.get("/admin/v1/accounts/granted", headers=ADMIN)).json()
    assert shown["balance"] == shown["ledger_sum"] == 510
    await assert_ledger_consistent(runtime)


async def test_an_adjustment_moves_the_balance_either_way_but_never_below_zero(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    account = await create_account(client, "adjusted", credits=100)
    url = "/admin/v1/accounts/adjusted/credits/adjust"
    taken = await client.post(url, json={"amount": -30, "reason": "double grant"}, headers=ADMIN)
    assert taken.status_code == 200
    assert taken.json()["balance"] == 70
    assert taken.json()["granted_this_cycle"] == 100  # a correction is not a grant
    given = await client.post(url, json={"amount": 5, "reason": "goodwill"}, headers=ADMIN)
    assert given.json()["balance"] == 75
    for body, field in [
        ({"amount": -76, "reason": "too much"}, "amount"),
        ({"amount": 0, "reason": "nothing"}, "amount"),
        ({"amount": 5}, "reason"),
        ({"amount": 5, "reason": ""}, "reason"),
        ({"amount": 5, "reason": "   "}, "reason"),
    ]:
        refused = await client.post(url, json=body, headers=ADMIN)
        assert assert_admin_error(refused, 422, "INVALID_PARAMS")["field"] == field
    async with runtime.db.read() as session:
        entries = await billing_repository.list_entries(session, account["id"])
    assert [(e.kind, e.amount, e.reason) for e in entries[:2]] == [
        ("adjustment", 5, "goodwill"),
        ("adjustment", -30, "double grant"),
    ]
    shown = (await client.get("/admin/v1/accounts/adjusted", headers=ADMIN)).json()
    assert shown["balance"] == shown["ledger_sum"] == 75
    await assert_ledger_consistent(runtime)


# -- model allowlists ----------------------------------------------------------------------


async def test_allow_and_deny_models_change_what_the_key_sees_and_can_call(
    client: httpx.AsyncClient,
) -> None:
    account = await create_account(client, "curated")
    acct = await create_key(client, "curated")
    everything = account["allowed_models"]

    denied = await client.post(
        "/admin/v1/accounts/curated/models/deny",
        json={"slugs": ["vivix-local-image", "no-such-model"]},
        headers=ADMIN,
    )
    assert denied.status_code == 200
    assert "vivix-local-image" not in denied.json()["allowed_models"]
    listed = (await client.get("/api/v1/models", headers=acct.headers)).json()["models"]
    assert "vivix-local-image" not in {m["slug"] for m in listed}
    refused = await client.post("/api/v1/generate", json=IMAGE, headers=acct.headers)
    assert refused.json()["error"] == "MODEL_NOT_ALLOWED"

    await client.post(
        "/admin/v1/accounts/curated/models/deny", json={"slugs": everything}, headers=ADMIN
    )
    empty = (await client.get("/api/v1/models", headers=acct.headers)).json()
    assert empty["models"] == []  # an empty allowlist allows nothing
    audio = {"model": "vivix-local-audio", "prompt": "rain"}
    refused = await client.post("/api/v1/generate", json=audio, headers=acct.headers)
    assert refused.json()["error"] == "MODEL_NOT_ALLOWED"

    allowed = await client.post(
        "/admin/v1/accounts/curated/models/allow",
        json={"slugs": ["vivix-local-image"]},
        headers=ADMIN,
    )
    assert allowed.json()["allowed_models"] == ["vivix-local-image"]
    listed = (await client.get("/api/v1/models", headers=acct.headers)).json()["models"]
    assert [m["slug"] for m in listed] == ["vivix-local-image"]
    assert (await client.post("/api/v1/generate", json=IMAGE, headers=acct.headers)).is_success

    unknown = await client.post(
        "/admin/v1/accounts/curated/models/allow", json={"slugs": ["no-such-model"]}, headers=ADMIN
    )
    assert assert_admin_error(unknown, 422, "INVALID_PARAMS")["field"] == "slug"
    empty_list = await client.post(
        "/admin/v1/accounts/curated/models/allow", json={"slugs": []}, headers=ADMIN
    )
    assert_admin_error(empty_list, 422, "INVALID_PARAMS")


# -- pricing overrides ---------------------------------------------------------------------


async def band_of(client: httpx.AsyncClient, acct: AccountWithKey, slug: str) -> dict[str, int]:
    models = (await client.get("/api/v1/models", headers=acct.headers)).json()["models"]
    band: dict[str, int] = next(m for m in models if m["slug"] == slug)["credits_band"]
    return band


async def estimate_of(client: httpx.AsyncClient, acct: AccountWithKey, body: dict[str, Any]) -> int:
    response = await client.post("/api/v1/generate", json=body, headers=acct.headers)
    assert response.status_code == 201, response.text
    estimate: int = response.json()["credits_estimate"]
    return estimate


async def test_price_factor_scales_band_and_estimate_rounding_up(
    client: httpx.AsyncClient,
) -> None:
    await create_account(client, "discounted")
    await client.patch("/admin/v1/accounts/discounted", json={"concurrent_jobs": 50}, headers=ADMIN)
    acct = await create_key(client, "discounted")
    assert await band_of(client, acct, "grok-imagine-image-quality") == {"min": 80, "max": 211}

    response = await client.put(
        "/admin/v1/accounts/discounted/pricing/grok-imagine-image-quality",
        json={"factor": 0.8},
        headers=ADMIN,
    )
    assert response.status_code == 200
    # 80 × 0.8 = 64; 211 × 0.8 = 168.8, rounded up to 169.
    assert response.json()["credits_band"] == {
        "slug": "grok-imagine-image-quality",
        "min": 64,
        "max": 169,
    }
    assert await band_of(client, acct, "grok-imagine-image-quality") == {"min": 64, "max": 169}
    grok = {"model": "grok-imagine-image-quality", "prompt": "x"}
    assert await estimate_of(client, acct, {**grok, "resolution": "4K"}) == 169
    assert await estimate_of(client, acct, {**grok, "resolution": "2K"}) == 112
    # Rounded per result, then multiplied.
    assert await estimate_of(client, acct, {**grok, "resolution": "4K", "number_results": 3}) == 507

    await client.put(
        "/admin/v1/accounts/discounted/pricing/vivix-local-image",
        json={"factor": "0.8"},
        headers=ADMIN,
    )
    assert await band_of(client, acct, "vivix-local-image") == {"min": 2, "max": 7}
    assert await estimate_of(client, acct, {**IMAGE, "resolution": "4K"}) == 7  # 6.4 → 7
    assert await estimate_of(client, acct, {**IMAGE, "resolution": "1K"}) == 2  # 1.6 → 2
    # Other models keep their prices.
    assert await band_of(client, acct, "seedream-4") == {"min": 30, "max": 60}


async def test_replacement_rows_must_cover_every_combination(client: httpx.AsyncClient) -> None:
    await create_account(client, "custom-priced")
    acct = await create_key(client, "custom-priced")
    path = "/admin/v1/accounts/custom-priced/pricing/vivix-local-image"
    rows = [
        {"when": {"resolution": "1K"}, "credits": 1},
        {"when": {"resolution": "2K"}, "credits": 1},
        {"when": {"resolution": "4K"}, "credits": 3},
    ]
    for bad_rows in (
        rows[:2],  # 4K has no price
        [{"when": {"colour": "red"}, "credits": 1}],
        [{"when": {"resolution": "1K"}, "credits": -1}],
        [{"credits": 1, "surprise": True}],
        [],
    ):
        response = await client.put(path, json={"rows": bad_rows}, headers=ADMIN)
        error = assert_admin_error(response, 422, "INVALID_PARAMS")
        assert error["field"] == "rows", bad_rows
    assert await band_of(client, acct, "vivix-local-image") == {"min": 2, "max": 8}

    response = await client.put(path, json={"rows": rows}, headers=ADMIN)
    assert response.status_code == 200
    assert response.json()["credits_band"]["max"] == 3
    assert await band_of(client, acct, "vivix-local-image") == {"min": 1, "max": 3}
    assert await estimate_of(client, acct, {**IMAGE, "resolution": "4K", "number_results": 2}) == 6

    cleared = await client.delete(path, headers=ADMIN)
    assert cleared.status_code == 200
    assert "vivix-local-image" not in cleared.json()["price_overrides"]
    assert await band_of(client, acct, "vivix-local-image") == {"min": 2, "max": 8}


async def test_bad_price_overrides_are_refused(client: httpx.AsyncClient) -> None:
    await create_account(client, "picky")
    base = "/admin/v1/accounts/picky/pricing"
    rows = [{"credits": 5}]
    for slug, body, field in [
        ("vivix-local-image", {"factor": 0}, "factor"),
        ("vivix-local-image", {"factor": -0.5}, "factor"),
        ("vivix-local-image", {"factor": "cheap"}, "factor"),
        ("vivix-local-image", {"factor": "NaN"}, "factor"),
        ("vivix-local-image", {"factor": 101}, "factor"),
        ("vivix-local-image", {}, "factor"),
        ("vivix-local-image", {"factor": 0.5, "rows": rows}, "factor"),
        ("no-such-model", {"factor": 0.5}, "slug"),
    ]:
        response = await client.put(f"{base}/{slug}", json=body, headers=ADMIN)
        error = assert_admin_error(response, 422, "INVALID_PARAMS")
        assert error["field"] == field, body
    shown = (await client.get("/admin/v1/accounts/picky", headers=ADMIN)).json()
    assert shown["price_overrides"] == {}
    missing = await client.put(f"{base.replace('picky', 'ghost')}/seedream-4", json={"factor": 1})
    assert_admin_error(missing, 401, "UNAUTHORIZED")
    missing = await client.put(
        f"{base.replace('picky', 'ghost')}/seedream-4", json={"factor": 1}, headers=ADMIN
    )
    assert_admin_error(missing, 404, "NOT_FOUND")


# -- catalog -------------------------------------------------------------------------------


async def test_catalog_lists_routes_and_their_availability(client: httpx.AsyncClient) -> None:
    response = await client.get("/admin/v1/catalog", headers=ADMIN)
    assert response.status_code == 200
    models = {m["slug"]: m for m in response.json()["data"]}
    grok = models["grok-imagine-image-quality"]
    assert grok["credits_band"] == {"min": 80, "max": 211}
    routes = {r["provider"]: r for r in grok["routes"]}
    assert routes["xai"]["configured"] is False
    assert routes["xai"]["available"] is False
    assert routes["fal"]["configured"] is True  # fal has an API key in this module
    assert routes["fal"]["available"] is True
    assert routes["fal"]["upstream_model"]
    assert grok["available"] is True
    local = models["vivix-local-image"]
    assert local["available"] is True
    assert [r["provider"] for r in local["routes"]] == ["local"]
    unconfigured = [m for m in models.values() if not m["available"]]
    assert unconfigured  # e.g. models only xAI or OpenAI serve
    for model in unconfigured:
        assert not any(r["available"] for r in model["routes"])
