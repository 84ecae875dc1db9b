"""Studio test helpers: users made through the real operator service, and a browser-like
HTTP client that keeps cookies and sends the CSRF token the pages carry."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import httpx

from vivix.admin import service as admin
from vivix.runtime import Runtime

PASSWORD = "correct horse battery"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_counter = 0


@dataclass(frozen=True)
class StudioUser:
    email: str
    password: str
    account: str
    account_id: str


async def studio_user(
    runtime: Runtime,
    *,
    tier: str = "free",
    credits: int | None = 1000,
    operator: bool = False,
    models: tuple[str, ...] = ("vivix-local-image", "vivix-local-audio", "vivix-local-video"),
    **updates: Any,
) -> StudioUser:
    """A user in an account of its own (created by the operator service, as the CLI does)."""
    global _counter
    _counter += 1
    name = f"studio-{_counter}"
    account = await admin.create_account(runtime, name, tier, credits)
    if updates:
        await admin.update_account(runtime, name, **updates)
    if models:
        await admin.set_models(runtime, name, list(models), allow=True)
    email = f"person{_counter}@example.com"
    await admin.create_user(runtime, email, account=name, operator=operator, password=PASSWORD)
    return StudioUser(email, PASSWORD, name, account["id"])


def csrf_of(html: str) -> str:
    match = _CSRF.search(html)
    assert match, "the page carries no CSRF token"
    return match.group(1)


async def sign_in(http: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    """Load the sign-in page (for its form token) and post the form, as a browser does."""
    page = await http.get("/signin")
    return await http.post(
        "/signin",
        data={"email": email, "password": password, "csrf_token": csrf_of(page.text)},
    )


async def signed_in(http: httpx.AsyncClient, user: StudioUser) -> str:
    """Sign in and return the session's CSRF token (from a signed-in page)."""
    response = await sign_in(http, user.email, user.password)
    assert response.status_code == 303, response.text
    page = await http.get("/generate")
    return csrf_of(page.text)
