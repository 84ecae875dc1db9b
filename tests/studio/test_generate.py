"""Generating from the Studio: the same admission, ledger and queue as the API
(`source: "studio"`), the form's validation next to its field, the server's estimate,
and the Studio's own per-user limit instead of the API's per-minute one."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.audit import assert_ledger_consistent
from tests.factories import account_with_key
from tests.studio.helpers import signed_in, studio_user
from vivix.admin import service as admin
from vivix.runtime import Runtime

FORM = {
    "model": "vivix-local-image",
    "prompt": "a lighthouse in fog",
    "aspect_ratio": "16:9",
    "resolution": "2K",
    "number_results": "2",
}


async def test_a_free_account_generates_from_the_form_through_the_same_admission(
    runtime: Runtime, browser: httpx.AsyncClient
) -> None:
    user = await studio_user(runtime, tier="free", credits=100)
    csrf = await signed_in(browser, user)
    response = await browser.post("/generate", data={**FORM, "csrf_token": csrf})
    assert response.status_code == 303
    generation_id = response.headers["location"].rsplit("/", 1)[1]
    # The wallet holds the estimate: 4 credits per 2K result, two results.
    shown = await admin.show_account(runtime, user.account)
    assert (shown["balance"], shown["held"], shown["active_jobs"]) == (92, 8, 1)
    # The API sees it with source "studio" (a pro key on the same account).
    await admin.update_account(runtime, user.account, tier="pro")
    key = await admin.create_key(runtime, user.account)
    headers = {"Authorization": f"Bearer {key['key']}"}
    async with httpx.AsyncClient(transport=browser._transport, base_url="http://testserver") as api:
        listed = (await api.get("/api/v1/generations", headers=headers)).json()["data"]
        one = (await api.get(f"/api/v1/generations/{generation_id}", headers=headers)).json()
    assert [g["generation_id"] for g in listed] == [generation_id]
    assert one["source"] == "studio"
    assert one["params"]["number_results"] == 2
    assert one["params"]["aspect_ratio"] == "16:9"
    await assert_ledger_consistent(runtime)


async def test_htmx_submit_returns_the_live_card_and_the_new_balance(
    runtime: Runtime, browser: httpx.AsyncClient
) -> None:
    user = await studio_user(runtime, credits=100)
    csrf = await signed_in(browser, user)
    response = await browser.post(
        "/generate", data=FORM, headers={"HX-Request": "true", "X-CSRF-Token": csrf}
    )
    assert response.status_code == 201
    html = response.text
    assert 'hx-swap-oob="afterbegin:#runs-list"' in html
    assert 'class="card run run-pending"' in html
    assert "data-live-generation=" in html  # the card keeps itself current (studio.js)
    assert re.search(r'id="wallet-balance" data-balance="92"', html)
    card_id = re.search(r'data-generation-id="([0-9a-f-]{36})"', html)
    assert card_id is not None
    card = await browser.get(f"/history/{card_id.group(1)}/card", headers={"HX-Request": "true"})
    assert card.status_code == 200
    assert "a lighthouse in fog" in card.text


async def test_a_bad_param_is_reported_next_to_its_field_and_nothing_is_held(
    runtime: Runtime, browser: httpx.AsyncClient
) -> None:
    user = await studio_user(runtime, credits=100)
    csrf = await signed_in(browser, user)
    response = await browser.post(
        "/generate",
        data={**FORM, "number_results": "9", "csrf_token": csrf},
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 422
    assert 'id="param-number_results-error"' in response.text
    assert "between 1 and 4" in response.text
    assert (
        'value="a lighthouse in fog"' in response.text or ">a lighthouse in fog<" in response.text
    )
    empty = await browser.post(
        "/generate",
        data={**FORM, "prompt": "  ", "csrf_token": csrf},
        headers={"HX-Request": "true"},
    )
    assert 'id="param-prompt-error"' in empty.text
    shown = await admin.show_account(runtime, user.account)
    assert (shown["balance"], shown["held"]) == (100, 0)


async def test_insufficient_credits_is_explained_on_the_form(
    runtime: Runtime, browser: httpx.AsyncClient
) -> None:
    user = await studio_user(runtime, credits=3)
    csrf = await signed_in(browser, user)
    response = await browser.post("/generate", data={**FORM, "csrf_token": csrf})
    assert response.status_code == 402
    assert "needs 8 credits; 3 are available" in response.text
    assert (await admin.show_account(runtime, user.account))["held"] == 0


async def test_the_estimate_is_the_servers_price_with_the_accounts_override(
    runtime: Runtime, browser: httpx.AsyncClient
) -> None:
    user = await studio_user(runtime, credits=100)
    await admin.set_price_override(runtime, user.account, "vivix-local-image", factor="2")
    await signed_in(browser, user)
    response = await browser.get(
        "/generate/estimate",
        params={"model": "vivix-local-image", "resolution": "4K", "number_results": "3"},
    )
    assert 'data-estimate="48"' in response.text  # 8 per 4K result × 3 × factor 2
    bad = await browser.get(
        "/generate/estimate", params={"model": "vivix-local-image", "resolution": "8K"}
    )
    assert "data-estimate" not in bad.text
    assert "resolution must be one of" in bad.text


async def test_a_model_outside_the_allowlist_cannot_be_used(
    runtime: Runtime, browser: httpx.AsyncClient
) -> None:
    user = await studio_user(runtime, models=("vivix-local-audio",))
    csrf = await signed_in(browser, user)
    page = await browser.get("/generate")
    assert 'value="vivix-local-image"' not in page.text
    response = await browser.post("/generate", data={**FORM, "csrf_token": csrf})
    assert response.status_code == 403
    assert "enabled for your account" in response.text
    assert (await admin.show_account(runtime, user.account))["held"] == 0


@pytest.mark.parametrize("settings_overrides", [{"studio": {"generations_per_minute": 2}}])
async def test_the_studio_has_its_own_per_user_limit_not_the_api_one(
    runtime: Runtime, browser: httpx.AsyncClient
) -> None:
    user = await studio_user(runtime, credits=100, calls_per_minute=1, concurrent_jobs=10)
    csrf = await signed_in(browser, user)
    small = {**FORM, "resolution": "1K", "number_results": "1", "csrf_token": csrf}
    assert (await browser.post("/generate", data=small)).status_code == 303
    assert (await browser.post("/generate", data=small)).status_code == 303  # API limit is 1
    third = await browser.post("/generate", data=small)
    assert third.status_code == 429
    assert "2 generations a minute" in third.text
    assert (await admin.show_account(runtime, user.account))["active_jobs"] == 2


async def test_a_double_submitted_form_makes_one_generation(
    runtime: Runtime, browser: httpx.AsyncClient
) -> None:
    user = await studio_user(runtime, credits=100, concurrent_jobs=10)
    csrf = await signed_in(browser, user)
    form = {**FORM, "csrf_token": csrf, "submission_id": "0b4ae4a6-61b8-4b55-9a4e-6c1e47f3f0f5"}
    first = await browser.post("/generate", data=form)
    again = await browser.post("/generate", data=form)
    assert first.headers["location"] == again.headers["location"]
    assert (await admin.show_account(runtime, user.account))["held"] == 8


async def test_api_keys_of_free_accounts_are_still_refused(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime, tier="free", credits=100)
    response = await client.post(
        "/api/v1/generate", json={"model": "vivix-local-image", "prompt": "x"}, headers=acct.headers
    )
    assert response.json()["error"] == "TIER_LOCKED"
