"""Whole journeys through the Studio in a real browser: what a person clicks and types,
checked against what the server then holds (wallet, keys, ledger)."""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from tests.browser.conftest import RENDER_MS, Pages, Studio, sign_in, until


def _balance(page: Any) -> int:
    return int(page.get_attribute("#wallet-balance", "data-balance"))


def _stay_on_this_document(page: Any) -> None:
    """Mark the loaded document: a reload or a navigation would lose the mark."""
    page.evaluate("window.__sameDocument = true")


def _same_document(page: Any) -> bool:
    return bool(page.evaluate("window.__sameDocument === true"))


def test_sign_in_refuses_a_wrong_password_then_lets_the_right_one_in(
    pages: Pages, studio: Studio
) -> None:
    user = studio.user()
    page = pages.new()
    page.goto("/generate")
    page.wait_for_url("**/signin?next=/generate")
    sign_in(page, user.email, "not the password")
    page.wait_for_selector("#signin-error")
    assert "/signin" in page.url
    assert not [c for c in page.context.cookies() if c["name"] == "vivix_session"]
    page.fill("#password", user.password)
    page.click("button[type=submit]")
    page.wait_for_url("**/generate")
    assert page.locator("h1").inner_text() == "Generate"
    assert page.locator(".user-menu-who strong").text_content() == user.email


def test_a_free_user_generates_and_the_result_and_charge_appear_without_a_reload(
    pages: Pages, studio: Studio
) -> None:
    user = studio.user(tier="free", credits=100)
    page = pages.signed_in(user)
    before = _balance(page)
    assert before == studio.account(user.account)["balance"]
    _stay_on_this_document(page)
    page.fill("#param-prompt", "a lighthouse in fog")
    page.click("#generate-submit")
    card = page.locator("#runs-list article.run[data-status=completed]")
    card.wait_for(timeout=RENDER_MS)
    image = card.locator("img").first
    image.wait_for()
    assert page.evaluate("(img) => img.complete && img.naturalWidth > 0", image.element_handle())
    assert _same_document(page)
    used = int(card.locator(".credits-used").get_attribute("data-credits-used"))
    assert used > 0
    page.wait_for_function(
        f"document.getElementById('wallet-balance')?.dataset.balance === '{before - used}'"
    )
    shown = studio.account(user.account)
    assert shown["balance"] == before - used
    assert shown["held"] == 0


def test_a_pro_user_creates_a_key_uses_it_sees_only_its_prefix_and_revokes_it(
    pages: Pages, studio: Studio
) -> None:
    user = studio.user(tier="pro")
    page = pages.signed_in(user)
    page.click("a[href='/settings/api']")
    page.fill("#key-name", "laptop")
    page.click("#create-key")
    key = page.locator("#new-key-value").inner_text().strip()
    assert re.fullmatch(r"vvx_live_[0-9A-Za-z]{32}", key), key
    # The key works from outside the browser, as curl would call it.
    with httpx.Client(base_url=studio.base_url, timeout=30) as curl:
        headers = {"Authorization": f"Bearer {key}"}
        credits = curl.get("/api/v1/credits", headers=headers)
        assert credits.status_code == 200, credits.text
        page.reload()
        assert key not in page.content()
        row = page.locator(f"#keys tr[data-key-prefix='{key[:15]}']")
        assert row.locator(".key-prefix").inner_text() == key[:15] + "…"
        row.get_by_role("button", name="Revoke").click()
        page.locator(f"#keys tr[data-key-prefix='{key[:15]}'].is-revoked").wait_for()
        refused = curl.get("/api/v1/credits", headers=headers)
        assert refused.status_code == 401
        assert refused.json()["error"] == "KEY_REVOKED"


def test_history_filters_live_in_the_url_and_a_run_can_be_run_again(
    pages: Pages, studio: Studio
) -> None:
    user = studio.user(tier="pro")
    key = studio.api_key(user.account)
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=studio.base_url, headers=headers, timeout=30) as api:
        for body in (
            {"model": "vivix-local-image", "prompt": "red kite over dunes"},
            {"model": "vivix-local-audio", "prompt": "rain on a tin roof", "duration": 1},
        ):
            assert api.post("/api/v1/generate", json=body).status_code == 201

        def all_done() -> list[dict[str, Any]] | None:
            data: list[dict[str, Any]] = api.get("/api/v1/generations").json()["data"]
            return data if all(g["status"] == "completed" for g in data) else None

        until(all_done)
        page = pages.signed_in(user)
        page.goto("/history")
        assert page.locator("#gallery .tile").count() == 2
        page.select_option("#f-category", "audio")
        page.get_by_role("button", name="Apply").click()
        page.wait_for_url(re.compile(r"/history\?.*category=audio"))
        tiles = page.locator("#gallery .tile")
        assert tiles.count() == 1
        assert "rain on a tin roof" in tiles.first.inner_text()
        # The filter is in the address: opening it again shows the same view.
        page.goto(page.url)
        assert page.locator("#f-category").input_value() == "audio"
        assert page.locator("#gallery .tile").count() == 1
        page.goto("/history?category=image")
        page.locator("#gallery .tile").first.click()
        page.wait_for_url(re.compile(r"/history/[0-9a-f-]{36}$"))
        first_id = page.url.rsplit("/", 1)[1]
        page.click("#rerun")
        page.wait_for_url(
            lambda url: (
                re.search(r"/history/[0-9a-f-]{36}$", url) is not None
                and not url.endswith(first_id)
            )
        )
        rerun_id = page.url.rsplit("/", 1)[1]
        page.locator(f"#run-{rerun_id}[data-status=completed]").wait_for(timeout=RENDER_MS)
        rerun = api.get(f"/api/v1/generations/{rerun_id}").json()
        original = api.get(f"/api/v1/generations/{first_id}").json()
        assert rerun["source"] == "studio"
        assert rerun["params"]["prompt"] == original["params"]["prompt"] == "red kite over dunes"


def test_the_usage_csv_download_adds_up_to_the_ledger(pages: Pages, studio: Studio) -> None:
    user = studio.user(tier="pro", credits=300)
    key = studio.api_key(user.account)
    page = pages.signed_in(user)
    page.fill("#param-prompt", "copper teapot")
    page.click("#generate-submit")
    page.locator("#runs-list article.run[data-status=completed]").wait_for(timeout=RENDER_MS)
    granted = studio.admin.post(
        f"/admin/v1/accounts/{user.account}/credits", json={"amount": 40, "reason": "=1+1"}
    )
    assert granted.status_code == 200, granted.text
    page.goto("/usage")
    with page.expect_download() as download:
        page.get_by_role("link", name="Export ledger (CSV)").click()
    path = download.value.path()
    assert path is not None
    rows = list(csv.DictReader(io.StringIO(Path(path).read_text("utf-8"))))
    assert [r["kind"] for r in rows][:1] == ["grant"]
    assert "capture" in [r["kind"] for r in rows] or "hold" in [r["kind"] for r in rows]
    with httpx.Client(base_url=studio.base_url, timeout=30) as api:
        credits = api.get("/api/v1/credits", headers={"Authorization": f"Bearer {key}"}).json()
    total = sum(int(r["amount"]) for r in rows)
    assert total == int(rows[-1]["balance_after"])
    assert credits["held"] == 0
    assert total == credits["balance"]
    assert total == studio.account(user.account)["ledger_sum"]
    assert int(page.get_attribute("#usage-balance", "data-balance")) == credits["balance"]


def test_an_operator_grants_credits_and_changes_a_tier_from_the_account_page(
    pages: Pages, studio: Studio
) -> None:
    operator = studio.user(operator=True)
    customer = studio.user(tier="free", credits=10)
    page = pages.signed_in(operator)
    page.click("a[href='/operator/accounts']")
    page.locator(f"a[href='/operator/accounts/{customer.account_id}']").first.click()
    page.wait_for_url(f"**/operator/accounts/{customer.account_id}")
    page.fill("#grant-amount", "250")
    page.fill("#grant-reason", "pilot")
    page.locator("#grant-form button[type=submit]").click()
    # Null-safe: while the form's answer replaces the page the element is briefly absent.
    page.wait_for_function("document.getElementById('op-balance')?.textContent.trim() === '260'")
    page.select_option("#tier", "pro")
    page.locator("#limits-form button[type=submit]").click()
    page.wait_for_function("document.getElementById('op-tier')?.textContent.trim() === 'Pro'")
    shown = studio.account(customer.account)
    assert (shown["balance"], shown["tier"]) == (260, "pro")
    # The customer's own Studio now offers API keys.
    customer_page = pages.signed_in(customer)
    customer_page.goto("/settings/api")
    assert customer_page.locator("#create-key").is_visible()


def test_a_non_operator_cannot_reach_operator_pages(pages: Pages, studio: Studio) -> None:
    user = studio.user(tier="ultimate")
    page = pages.signed_in(user)
    assert page.locator(".nav-heading", has_text="Operator").count() == 0
    for path in (
        "/operator",
        "/operator/accounts",
        f"/operator/accounts/{user.account_id}",
        "/operator/users",
        "/operator/keys",
        "/operator/catalog",
        "/operator/queue",
    ):
        response = page.goto(path)
        assert response is not None, path
        assert response.status == 404, path
        assert page.locator("#grant-form").count() == 0


class _Receiver(BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((dict(self.headers.items()), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_a_webhook_added_in_settings_receives_a_signed_test_event(
    pages: Pages, studio: Studio
) -> None:
    received: list[tuple[dict[str, str], bytes]] = []
    handler = type("Receiver", (_Receiver,), {"received": received})
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{receiver.server_address[1]}/hooks/vivix"
        page = pages.signed_in(studio.user(tier="pro"))
        page.goto("/settings/api")
        page.fill("#webhook-url", url)
        page.fill("#webhook-description", "my laptop")
        page.click("#add-webhook-submit")
        secret = page.locator("#new-secret-value").inner_text().strip()
        assert secret.startswith("whsec_")
        hook = page.locator("#webhook-list li.hook", has_text=url)
        hook.get_by_role("button", name="Send test").click()
        until(lambda: received)
        headers, body = received[0]
        headers = {k.lower(): v for k, v in headers.items()}
        assert json.loads(body)["event"] == "webhook.test"
        mac = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        assert headers["x-vivix-signature"] == "sha256=" + mac
        # The delivery log shows it delivered, with the receiver's answer.
        page.goto("/settings/api")
        page.locator("#webhook-list li.hook", has_text=url).get_by_role(
            "link", name=re.compile("Deliveries")
        ).click()
        page.locator("#deliveries tr[data-status=succeeded]").wait_for()
        assert secret not in page.content()
    finally:
        receiver.shutdown()
        receiver.server_close()
