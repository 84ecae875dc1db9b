"""Usage (CSV that adds up to the ledger), Settings (keys shown once, revocation, password
and sessions) and the operator pages (operators only), over HTTP as a browser sends it."""

from __future__ import annotations

import csv
import io
import re

import httpx

from tests.audit import assert_ledger_consistent
from tests.studio.helpers import csrf_of, sign_in, signed_in, studio_user
from vivix.admin import service as admin
from vivix.runtime import Runtime

FORM = {"model": "vivix-local-image", "prompt": "harbour at dusk", "number_results": "1"}
OPERATOR_PAGES = (
    "/operator/accounts",
    "/operator/users",
    "/operator/keys",
    "/operator/catalog",
    "/operator/queue",
)


async def test_usage_csv_adds_up_to_the_ledger(
    runtime: Runtime, browser: httpx.AsyncClient
) -> None:
    user = await studio_user(runtime, credits=50, concurrent_jobs=5)
    csrf = await signed_in(browser, user)
    await admin.grant_credits(runtime, user.account, 25, "=HYPERLINK(evil)")
    ids = []
    for _ in range(2):
        response = await browser.post("/generate", data={**FORM, "csrf_token": csrf})
        ids.append(response.headers["location"].rsplit("/", 1)[1])
    await browser.post(f"/history/{ids[0]}/cancel", data={"csrf_token": csrf})
    page = await browser.get("/usage")
    assert page.status_code == 200
    assert 'data-balance="73"' in page.text  # 50 + 25 − 2 (two held, one canceled and released)
    assert "No credits spent in the last 30 days" in page.text  # holds are not spend
    export = await browser.get("/usage/ledger.csv")
    assert export.headers["content-type"].startswith("text/csv")
    assert "attachment" in export.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(export.text)))
    assert [r["kind"] for r in rows] == ["grant", "grant", "hold", "hold", "release"]
    assert sum(int(r["amount"]) for r in rows) == 73
    assert int(rows[-1]["balance_after"]) == 73
    assert rows[1]["reason"] == "'=HYPERLINK(evil)"  # not a formula in a spreadsheet
    shown = await admin.show_account(runtime, user.account)
    assert shown["balance"] == shown["ledger_sum"] == 73
    await assert_ledger_consistent(runtime)


async def test_a_free_account_is_told_api_keys_need_pro_and_cannot_make_one(
    runtime: Runtime, browser: httpx.AsyncClient
) -> None:
    user = await studio_user(runtime, tier="free")
    csrf = await signed_in(browser, user)
    page = await browser.get("/settings/api")
    assert "API keys come with the Pro and Ultimate plans" in page.text
    assert 'id="create-key"' not in page.text
    refused = await browser.post("/settings/api/keys", data={"name": "x", "csrf_token": csrf})
    assert refused.status_code == 403
    assert (await admin.show_account(runtime, user.account))["keys"] == []


async def test_a_pro_key_is_shown_once_works_and_revokes(
    runtime: Runtime, browser: httpx.AsyncClient, other_browser: httpx.AsyncClient
) -> None:
    user = await studio_user(runtime, tier="pro")
    csrf = await signed_in(browser, user)
    created = await browser.post("/settings/api/keys", data={"name": "backend", "csrf_token": csrf})
    assert created.status_code == 201
    key = re.search(r'id="new-key-value">(vvx_live_[0-9A-Za-z]{32})<', created.text)
    assert key is not None
    assert 'data-hide-after="30"' in created.text
    plaintext = key.group(1)
    headers = {"Authorization": f"Bearer {plaintext}"}
    async with httpx.AsyncClient(transport=browser._transport, base_url="http://testserver") as api:
        assert (await api.get("/api/v1/credits", headers=headers)).status_code == 200
        reloaded = await browser.get("/settings/api")
        assert plaintext not in reloaded.text
        assert plaintext[:15] in reloaded.text
        key_id = re.search(r"/settings/api/keys/([0-9a-f-]{36})/revoke", reloaded.text)
        assert key_id is not None
        # Another account's user can't revoke it (404), it keeps working.
        stranger = await studio_user(runtime, tier="pro")
        other_csrf = await signed_in(other_browser, stranger)
        foreign = await other_browser.post(
            f"/settings/api/keys/{key_id.group(1)}/revoke", data={"csrf_token": other_csrf}
        )
        assert foreign.status_code == 404
        assert (await api.get("/api/v1/credits", headers=headers)).status_code == 200
        revoked = await browser.post(
            f"/settings/api/keys/{key_id.group(1)}/revoke", data={"csrf_token": csrf}
        )
        assert revoked.status_code == 303
        after = await api.get("/api/v1/credits", headers=headers)
        assert after.status_code == 401
        assert after.json()["error"] == "KEY_REVOKED"


async def test_password_change_signs_out_other_devices_but_not_this_one(
    runtime: Runtime, browser: httpx.AsyncClient, other_browser: httpx.AsyncClient
) -> None:
    user = await studio_user(runtime)
    csrf = await signed_in(browser, user)
    await signed_in(other_browser, user)
    page = await browser.get("/settings/account")
    assert len(re.findall(r"/settings/account/sessions/[0-9a-f]{64}/revoke", page.text)) == 1
    wrong = await browser.post(
        "/settings/account/password",
        data={"current_password": "nope", "new_password": "a brand new secret",
              "new_password_again": "a brand new secret", "csrf_token": csrf},
    )  # fmt: skip
    assert wrong.status_code == 422
    assert "is not your current password" in wrong.text
    changed = await browser.post(
        "/settings/account/password",
        data={"current_password": user.password, "new_password": "a brand new secret",
              "new_password_again": "a brand new secret", "csrf_token": csrf},
    )  # fmt: skip
    assert changed.status_code == 303
    assert (await browser.get("/settings/account")).status_code == 200
    assert (await other_browser.get("/settings/account")).status_code == 303
    assert (await sign_in(other_browser, user.email, user.password)).status_code == 401
    assert (await sign_in(other_browser, user.email, "a brand new secret")).status_code == 303


async def test_non_operators_cannot_reach_operator_pages(
    runtime: Runtime, browser: httpx.AsyncClient
) -> None:
    user = await studio_user(runtime, tier="ultimate")
    csrf = await signed_in(browser, user)
    page = await browser.get("/generate")
    assert "/operator/" not in page.text
    for path in OPERATOR_PAGES:
        assert (await browser.get(path)).status_code == 404
    grant = await browser.post(
        f"/operator/accounts/{user.account_id}/grant", data={"amount": "500", "csrf_token": csrf}
    )
    assert grant.status_code == 404
    assert (await admin.show_account(runtime, user.account))["balance"] == 1000


async def test_an_operator_grants_credits_changes_the_tier_and_suspends(
    runtime: Runtime, browser: httpx.AsyncClient, other_browser: httpx.AsyncClient
) -> None:
    operator = await studio_user(runtime, operator=True)
    customer = await studio_user(runtime, tier="free", credits=0)
    csrf = await signed_in(browser, operator)
    await signed_in(other_browser, customer)
    for path in OPERATOR_PAGES:
        assert (await browser.get(path)).status_code == 200, path
    base = f"/operator/accounts/{customer.account_id}"
    assert (await browser.get(base)).status_code == 200
    granted = await browser.post(
        f"{base}/grant", data={"amount": "750", "reason": "pilot", "csrf_token": csrf}
    )
    assert granted.status_code == 303
    bad = await browser.post(f"{base}/grant", data={"amount": "-5", "csrf_token": csrf})
    assert bad.status_code == 422
    tier = await browser.post(
        f"{base}/limits", data={"tier": "standard", "concurrent_jobs": "3", "csrf_token": csrf}
    )
    assert tier.status_code == 303
    models = await browser.post(
        f"{base}/models", data={"models": ["vivix-local-audio"], "csrf_token": csrf}
    )
    assert models.status_code == 303
    shown = await admin.show_account(runtime, customer.account)
    assert (shown["balance"], shown["tier"], shown["concurrent_jobs"]) == (750, "standard", 3)
    assert shown["allowed_models"] == ["vivix-local-audio"]
    new_user = await browser.post(
        f"{base}/users", data={"email": "teammate@example.com", "csrf_token": csrf}
    )
    password = re.search(r'id="new-user-password">([^<]+)<', new_user.text)
    assert password is not None
    suspended = await browser.post(f"{base}/suspension", data={"suspend": "1", "csrf_token": csrf})
    assert suspended.status_code == 303
    assert (await other_browser.get("/generate")).status_code == 303  # signed out
    assert (await sign_in(other_browser, customer.email, customer.password)).status_code == 403
    await browser.post(f"{base}/suspension", data={"suspend": "0", "csrf_token": csrf})
    teammate = await sign_in(other_browser, "teammate@example.com", password.group(1))
    assert teammate.status_code == 303
    ledger = (await other_browser.get("/usage")).text
    assert "pilot" in ledger
    assert csrf_of(ledger)
