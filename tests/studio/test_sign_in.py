"""Signing in and out: wrong passwords refused, server-side sessions that sign out for
real, the cookie's flags, and the throttle on failed sign-ins (per email, per address)."""

from __future__ import annotations

import hashlib

import httpx
import pytest
from sqlalchemy import select

from tests.studio.helpers import PASSWORD, csrf_of, sign_in, signed_in, studio_user
from vivix.app import create_app
from vivix.models import StudioSession
from vivix.runtime import Runtime


async def test_wrong_password_is_refused_and_sets_no_session(
    runtime: Runtime, browser: httpx.AsyncClient
) -> None:
    user = await studio_user(runtime)
    response = await sign_in(browser, user.email, "not the password")
    assert response.status_code == 401
    assert "match" in response.text
    assert "vivix_session" not in response.cookies
    assert (await browser.get("/generate")).status_code == 303  # still signed out
    async with runtime.db.read() as session:
        assert (await session.execute(select(StudioSession))).first() is None


async def test_unknown_email_gets_the_same_answer_as_a_wrong_password(
    runtime: Runtime, browser: httpx.AsyncClient
) -> None:
    user = await studio_user(runtime)
    wrong = await sign_in(browser, user.email, "not the password")
    unknown = await sign_in(browser, "nobody@example.com", PASSWORD)
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.text.replace(user.email, "") == unknown.text.replace("nobody@example.com", "")


async def test_sign_in_sets_an_http_only_same_site_cookie_and_opens_the_studio(
    runtime: Runtime, browser: httpx.AsyncClient
) -> None:
    user = await studio_user(runtime)
    response = await sign_in(browser, user.email.upper(), user.password)  # emails ignore case
    assert response.status_code == 303
    assert response.headers["location"] == "/generate"
    cookie = next(
        v for k, v in response.headers.multi_items() if k == "set-cookie" and "vivix_session=" in v
    )
    flags = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "samesite", "path"} <= flags
    assert "samesite=lax" in cookie.lower()
    assert "secure" not in flags  # the public URL is http here
    page = await browser.get("/generate")
    assert page.status_code == 200
    assert user.email in page.text


async def test_only_a_hash_of_the_session_token_is_stored(
    runtime: Runtime, browser: httpx.AsyncClient
) -> None:
    user = await studio_user(runtime)
    await sign_in(browser, user.email, user.password)
    token = browser.cookies["vivix_session"]
    async with runtime.db.read() as session:
        stored = list((await session.execute(select(StudioSession))).scalars())
    assert [s.id for s in stored] == [hashlib.sha256(token.encode()).hexdigest()]
    assert token not in {s.id for s in stored}


@pytest.mark.parametrize("settings_overrides", [{"public_url": "https://studio.example"}])
async def test_cookie_is_secure_when_the_public_url_is_https(runtime: Runtime) -> None:
    user = await studio_user(runtime)
    transport = httpx.ASGITransport(app=create_app(runtime.settings, runtime=runtime))
    async with httpx.AsyncClient(transport=transport, base_url="https://studio.example") as https:
        response = await sign_in(https, user.email, user.password)
    cookie = next(v for k, v in response.headers.multi_items() if "vivix_session=" in v)
    assert "secure" in {part.strip().lower() for part in cookie.split(";")}


async def test_sign_out_revokes_the_session_on_the_server(
    runtime: Runtime, browser: httpx.AsyncClient
) -> None:
    user = await studio_user(runtime)
    csrf = await signed_in(browser, user)
    token = browser.cookies["vivix_session"]
    response = await browser.post("/signout", data={"csrf_token": csrf})
    assert response.status_code == 303
    # Replaying the old cookie (as a thief would) no longer works.
    browser.cookies.set("vivix_session", token)
    assert (await browser.get("/generate")).status_code == 303


async def test_sign_out_everywhere_ends_every_session_of_the_user(
    runtime: Runtime, browser: httpx.AsyncClient, other_browser: httpx.AsyncClient
) -> None:
    user = await studio_user(runtime)
    csrf = await signed_in(browser, user)
    await signed_in(other_browser, user)
    await browser.post("/signout", data={"csrf_token": csrf, "everywhere": "1"})
    assert (await other_browser.get("/generate")).status_code == 303


async def test_next_only_leads_to_this_site(runtime: Runtime, browser: httpx.AsyncClient) -> None:
    user = await studio_user(runtime)
    page = await browser.get("/signin?next=//evil.example/x")
    response = await browser.post(
        "/signin",
        data={
            "email": user.email,
            "password": user.password,
            "csrf_token": csrf_of(page.text),
            "next": "//evil.example/x",
        },
    )
    assert response.headers["location"] == "/generate"


async def test_pages_redirect_anonymous_visitors_to_sign_in(browser: httpx.AsyncClient) -> None:
    response = await browser.get("/history?status=completed")
    assert response.status_code == 303
    assert response.headers["location"] == "/signin?next=/history%3Fstatus%3Dcompleted"


async def test_the_eleventh_quick_wrong_password_is_throttled(
    runtime: Runtime, browser: httpx.AsyncClient
) -> None:
    user = await studio_user(runtime)
    for _ in range(10):
        assert (await sign_in(browser, user.email, "wrong password!")).status_code == 401
    eleventh = await sign_in(browser, user.email, "wrong password!")
    assert eleventh.status_code == 429
    assert 1 <= int(eleventh.headers["retry-after"]) <= 15 * 60
    # Throttled means throttled: even the right password waits now.
    right = await sign_in(browser, user.email, user.password)
    assert right.status_code == 429
    assert "vivix_session" not in browser.cookies


@pytest.mark.parametrize("settings_overrides", [{"studio": {"signin_failures_per_address": 3}}])
async def test_failures_are_also_counted_per_client_address(
    runtime: Runtime, browser: httpx.AsyncClient, other_browser: httpx.AsyncClient
) -> None:
    user = await studio_user(runtime)
    for n in range(3):
        assert (await sign_in(browser, f"guess{n}@example.com", "x" * 12)).status_code == 401
    assert (await sign_in(browser, user.email, user.password)).status_code == 429
    # Another address is not affected.
    assert (await sign_in(other_browser, user.email, user.password)).status_code == 303


async def test_suspended_account_cannot_sign_in(
    runtime: Runtime, browser: httpx.AsyncClient
) -> None:
    from vivix.admin import service as admin

    user = await studio_user(runtime)
    await admin.set_suspended(runtime, user.account, suspended=True)
    response = await sign_in(browser, user.email, user.password)
    assert response.status_code == 403
    assert "vivix_session" not in browser.cookies
