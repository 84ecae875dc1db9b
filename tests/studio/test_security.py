"""The Studio's defences: CSRF on every state change, security headers on every page, and
tenant isolation (another account's generations are 404, never visible or actionable)."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import func, select

from tests.audit import assert_ledger_consistent
from tests.studio.helpers import signed_in, studio_user
from vivix.models import Generation, LedgerEntry
from vivix.runtime import Runtime

FORM = {
    "model": "vivix-local-image",
    "prompt": "a lighthouse in fog",
    "aspect_ratio": "1:1",
    "resolution": "1K",
    "number_results": "1",
}


async def _counts(runtime: Runtime) -> tuple[int, int]:
    async with runtime.db.read() as session:
        generations = (
            await session.execute(select(func.count()).select_from(Generation))
        ).scalar_one()
        entries = (
            await session.execute(select(func.count()).select_from(LedgerEntry))
        ).scalar_one()
    return generations, entries


@pytest.mark.parametrize("token", [None, "", "forged-token"])
async def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(
    runtime: Runtime, browser: httpx.AsyncClient, token: str | None
) -> None:
    user = await studio_user(runtime)
    await signed_in(browser, user)
    before = await _counts(runtime)
    form = dict(FORM) if token is None else {**FORM, "csrf_token": token}
    response = await browser.post("/generate", data=form)
    assert response.status_code == 403
    assert "did not come from this site" in response.text
    assert await _counts(runtime) == before
    # Signing out is a state change too: refused without the token, session still valid.
    assert (await browser.post("/signout", data={})).status_code == 403
    assert (await browser.get("/generate")).status_code == 200


async def test_a_cross_site_origin_is_refused_even_with_a_token(
    runtime: Runtime, browser: httpx.AsyncClient
) -> None:
    user = await studio_user(runtime)
    csrf = await signed_in(browser, user)
    before = await _counts(runtime)
    response = await browser.post(
        "/generate", data={**FORM, "csrf_token": csrf}, headers={"Origin": "https://evil.example"}
    )
    assert response.status_code == 403
    assert await _counts(runtime) == before
    same_site = await browser.post(
        "/generate", data={**FORM, "csrf_token": csrf}, headers={"Origin": "http://testserver"}
    )
    assert same_site.status_code == 303


async def test_sign_in_form_needs_its_own_token(
    runtime: Runtime, browser: httpx.AsyncClient
) -> None:
    user = await studio_user(runtime)
    response = await browser.post("/signin", data={"email": user.email, "password": user.password})
    assert response.status_code == 403
    assert "vivix_session" not in browser.cookies


async def test_every_page_carries_the_security_headers(
    runtime: Runtime, browser: httpx.AsyncClient
) -> None:
    user = await studio_user(runtime)
    for response in [await browser.get("/signin")]:
        _assert_security_headers(response)
    await signed_in(browser, user)
    for path in ("/generate", "/history", "/no-such-page"):
        _assert_security_headers(await browser.get(path))
    static = await browser.get("/static/studio.css")
    assert static.headers["x-content-type-options"] == "nosniff"


def _assert_security_headers(response: httpx.Response) -> None:
    csp = response.headers["content-security-policy"]
    directives = {d.strip().split(" ")[0]: d.strip() for d in csp.split(";")}
    assert directives["script-src"] == "script-src 'self'"
    assert "unsafe-inline" not in csp
    assert "unsafe-eval" not in csp
    assert directives["frame-ancestors"] == "frame-ancestors 'none'"
    assert directives["object-src"] == "object-src 'none'"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "same-origin"
    assert response.headers["x-frame-options"] == "DENY"


async def test_pages_contain_no_inline_script(runtime: Runtime, browser: httpx.AsyncClient) -> None:
    user = await studio_user(runtime)
    await signed_in(browser, user)
    for path in ("/generate", "/history"):
        html = (await browser.get(path)).text
        assert "<script>" not in html
        assert " on" + "click=" not in html
        assert html.count("<script ") == html.count('<script src="/static/')


async def test_another_accounts_generation_is_404_everywhere(
    runtime: Runtime, browser: httpx.AsyncClient, other_browser: httpx.AsyncClient
) -> None:
    owner = await studio_user(runtime)
    stranger = await studio_user(runtime)
    csrf = await signed_in(browser, owner)
    submitted = await browser.post("/generate", data={**FORM, "csrf_token": csrf})
    assert submitted.status_code == 303
    generation_id = submitted.headers["location"].rsplit("/", 1)[1]
    other_csrf = await signed_in(other_browser, stranger)
    before = await _counts(runtime)
    for path in (f"/history/{generation_id}", f"/history/{generation_id}/card"):
        response = await other_browser.get(path)
        assert response.status_code == 404
        assert "a lighthouse in fog" not in response.text
    for action in ("cancel", "rerun"):
        response = await other_browser.post(
            f"/history/{generation_id}/{action}", data={"csrf_token": other_csrf}
        )
        assert response.status_code == 404
    assert await _counts(runtime) == before
    gallery = await other_browser.get("/history")
    assert generation_id not in gallery.text
    edit = await other_browser.get(f"/generate?from={generation_id}")
    assert "a lighthouse in fog" not in edit.text
    # The owner still sees it, untouched.
    assert (await browser.get(f"/history/{generation_id}")).status_code == 200
    await assert_ledger_consistent(runtime)
