"""Settings → API & Webhooks, the webhook endpoints, over HTTP as a browser sends them:
add (secret shown once, 5 at most), rotate (24 h overlap), enable/disable, test, delete,
and the egress guard's refusals as form errors. Every action goes through the service
behind /api/v1/webhooks (checked by reading the result back through the API), needs the
CSRF token, and answers 404 for another account's ids.

Targets are https URLs whose names resolve, through the runtime's resolver, to a public
address; nothing is sent here (no sender runs; see test_webhook_deliveries.py)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from tests.studio.helpers import StudioUser, signed_in, studio_user
from vivix.admin import service as admin
from vivix.kit.clock import as_utc, utcnow
from vivix.models import WebhookDelivery, WebhookEndpoint
from vivix.runtime import Runtime
from vivix.webhooks.secrets import decrypt_secret

PUBLIC = "93.184.216.34"
HOOK = "https://hooks.example.com/vivix"
SECRET = re.compile(r'id="new-secret-value">(whsec_[A-Za-z0-9+/=]{44})<')
EVENTS = ["generation.completed", "generation.failed", "generation.canceled"]


async def fake_dns(host: str, port: int, /) -> list[str]:
    return {
        "hooks.example.com": [PUBLIC],
        "other.example.com": [PUBLIC],
        "intranet.example.com": ["10.1.2.3"],
    }.get(host, [])


@pytest.fixture
def dns(runtime: Runtime) -> Runtime:
    runtime.resolver = fake_dns
    return runtime


def form(csrf: str | None, **fields: Any) -> dict[str, Any]:
    values: dict[str, Any] = {"url": HOOK, "events": EVENTS, "events_shown": "1", **fields}
    if csrf is not None:
        values["csrf_token"] = csrf
    return values


async def endpoints_of(runtime: Runtime, user: StudioUser) -> list[WebhookEndpoint]:
    async with runtime.db.read() as session:
        rows = await session.execute(
            select(WebhookEndpoint)
            .where(WebhookEndpoint.account_id == user.account_id)
            .order_by(WebhookEndpoint.id)
        )
        return list(rows.scalars())


async def deliveries_count(runtime: Runtime) -> int:
    async with runtime.db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(WebhookDelivery)) or 0)


async def add(browser: httpx.AsyncClient, csrf: str, **fields: Any) -> tuple[str, str]:
    """Add an endpoint through the page; its id and the secret the page showed."""
    response = await browser.post("/settings/api/webhooks", data=form(csrf, **fields))
    assert response.status_code == 201, response.text
    secret = SECRET.search(response.text)
    assert secret is not None
    ids = re.findall(r'data-webhook-id="([0-9a-f-]{36})"', response.text)
    return ids[-1], secret.group(1)


async def test_add_shows_the_secret_once_and_the_api_sees_the_same_endpoint(
    dns: Runtime, browser: httpx.AsyncClient
) -> None:
    user = await studio_user(dns, tier="pro")
    csrf = await signed_in(browser, user)
    empty = await browser.get("/settings/api")
    assert 'id="add-webhook"' in empty.text
    assert "0 of 5 endpoints" in empty.text
    response = await browser.post(
        "/settings/api/webhooks",
        data=form(csrf, description="prod", events=["generation.completed"]),
    )
    assert response.status_code == 201
    assert 'data-hide-after="30"' in response.text
    secret = SECRET.search(response.text)
    assert secret is not None
    [stored] = await endpoints_of(dns, user)
    assert decrypt_secret(dns.secret, stored.id, stored.secret_encrypted) == secret.group(1)
    assert (stored.url, stored.description, stored.events) == (
        HOOK,
        "prod",
        ["generation.completed"],
    )
    assert stored.include_studio is False  # unticked box on a pro account
    reloaded = await browser.get("/settings/api")
    assert secret.group(1) not in reloaded.text
    assert f"{stored.secret_prefix}…" in reloaded.text
    assert "1 of 5 endpoints" in reloaded.text
    # The same endpoint through the API: one implementation behind both.
    key = await admin.create_key(dns, user.account, "check")
    listed = await browser.get(
        "/api/v1/webhooks", headers={"Authorization": f"Bearer {key['key']}"}
    )
    assert [(w["id"], w["url"]) for w in listed.json()["data"]] == [(stored.id, HOOK)]


async def test_a_free_account_can_add_one_and_studio_events_are_on_by_default(
    dns: Runtime, browser: httpx.AsyncClient
) -> None:
    user = await studio_user(dns, tier="free")
    csrf = await signed_in(browser, user)
    page = await browser.get("/settings/api")
    assert re.search(r'name="include_studio" type="checkbox" role="switch" checked', page.text)
    await add(browser, csrf, include_studio="on")
    [stored] = await endpoints_of(dns, user)
    assert stored.include_studio is True


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://hooks.example.com/x", "The URL must be an https:// URL"),
        ("https://intranet.example.com/x", "intranet.example.com resolves to a private"),
        ("https://nowhere.example.com/x", "nowhere.example.com does not resolve"),
        ("https://user:pw@hooks.example.com/x", "The URL must not contain credentials"),
        ("", "The URL is required."),
        ("not a url", "The URL must be an https:// URL"),
    ],
)
async def test_refused_targets_are_form_errors_and_nothing_is_saved(
    dns: Runtime, browser: httpx.AsyncClient, url: str, shown: str
) -> None:
    user = await studio_user(dns)
    csrf = await signed_in(browser, user)
    response = await browser.post(
        "/settings/api/webhooks", data=form(csrf, url=url, description="kept")
    )
    assert response.status_code == 422
    error = re.search(r'id="webhook-url-error" role="alert">([^<]*)<', response.text)
    assert error is not None, response.text
    assert shown in error.group(1)
    assert 'value="kept"' in response.text  # the form keeps what was typed
    assert await endpoints_of(dns, user) == []


async def test_no_event_ticked_is_a_form_error(dns: Runtime, browser: httpx.AsyncClient) -> None:
    user = await studio_user(dns)
    csrf = await signed_in(browser, user)
    response = await browser.post("/settings/api/webhooks", data=form(csrf, events=[]))
    assert response.status_code == 422
    assert "Choose at least one event." in response.text
    assert await endpoints_of(dns, user) == []


async def test_a_sixth_endpoint_is_refused_on_the_form(
    dns: Runtime, browser: httpx.AsyncClient
) -> None:
    user = await studio_user(dns)
    csrf = await signed_in(browser, user)
    for n in range(4):
        await add(browser, csrf, url=f"{HOOK}/{n}")
    fifth = await browser.post("/settings/api/webhooks", data=form(csrf))
    assert 'id="webhook-limit"' in fifth.text
    assert 'id="add-webhook"' not in fifth.text
    refused = await browser.post("/settings/api/webhooks", data=form(csrf, url=f"{HOOK}/6"))
    assert refused.status_code == 409
    assert "at most 5 webhook endpoints" in refused.text
    assert len(await endpoints_of(dns, user)) == 5


async def test_rotate_shows_the_new_secret_once_and_keeps_the_old_one_for_a_day(
    dns: Runtime, browser: httpx.AsyncClient
) -> None:
    user = await studio_user(dns)
    csrf = await signed_in(browser, user)
    endpoint_id, old = await add(browser, csrf)
    response = await browser.post(
        f"/settings/api/webhooks/{endpoint_id}/rotate", data={"csrf_token": csrf}
    )
    assert response.status_code == 200
    new = SECRET.search(response.text)
    assert new is not None
    assert new.group(1) != old
    assert "keeps signing too until" in response.text
    [stored] = await endpoints_of(dns, user)
    assert decrypt_secret(dns.secret, stored.id, stored.secret_encrypted) == new.group(1)
    assert stored.previous_secret_encrypted is not None
    assert decrypt_secret(dns.secret, stored.id, stored.previous_secret_encrypted) == old
    assert stored.previous_secret_expires_at is not None
    overlap = as_utc(stored.previous_secret_expires_at) - utcnow()
    assert timedelta(hours=23, minutes=59) < overlap <= timedelta(hours=24)
    page = await browser.get(f"/settings/api/webhooks/{endpoint_id}")
    assert new.group(1) not in page.text
    assert f"{stored.secret_prefix}…" in page.text


async def test_disable_and_enable(dns: Runtime, browser: httpx.AsyncClient) -> None:
    user = await studio_user(dns)
    csrf = await signed_in(browser, user)
    endpoint_id, _ = await add(browser, csrf)
    url = f"/settings/api/webhooks/{endpoint_id}/enabled"
    off = await browser.post(url, data={"csrf_token": csrf, "enabled": "false"})
    assert off.status_code == 303
    assert [e.enabled for e in await endpoints_of(dns, user)] == [False]
    page = await browser.get(off.headers["location"])
    assert "Endpoint disabled" in page.text
    assert ">Enable</button>" in page.text
    on = await browser.post(url, data={"csrf_token": csrf, "enabled": "true"})
    assert on.status_code == 303
    assert [e.enabled for e in await endpoints_of(dns, user)] == [True]


async def test_send_test_queues_a_delivery_shown_in_the_log(
    dns: Runtime, browser: httpx.AsyncClient
) -> None:
    user = await studio_user(dns)
    csrf = await signed_in(browser, user)
    endpoint_id, _ = await add(browser, csrf)
    sent = await browser.post(
        f"/settings/api/webhooks/{endpoint_id}/test", data={"csrf_token": csrf}
    )
    assert sent.status_code == 303
    page = await browser.get(sent.headers["location"])
    assert "Test event queued" in page.text
    assert page.text.count("data-delivery-id=") == 1
    assert 'data-status="pending"' in page.text
    assert 'hx-trigger="every 2s"' in page.text  # the log refreshes while one is pending
    delivery_id = re.search(r'data-delivery-id="([0-9a-f-]{36})"', page.text)
    assert delivery_id is not None
    detail = await browser.get(
        f"/settings/api/webhooks/{endpoint_id}/deliveries/{delivery_id.group(1)}"
    )
    assert detail.status_code == 200
    assert "&#34;event&#34;: &#34;webhook.test&#34;" in detail.text  # the request body
    assert "Not sent yet" in detail.text


async def test_delete_removes_the_endpoint_and_its_deliveries(
    dns: Runtime, browser: httpx.AsyncClient
) -> None:
    user = await studio_user(dns)
    csrf = await signed_in(browser, user)
    endpoint_id, _ = await add(browser, csrf)
    await browser.post(f"/settings/api/webhooks/{endpoint_id}/test", data={"csrf_token": csrf})
    gone = await browser.post(
        f"/settings/api/webhooks/{endpoint_id}/delete", data={"csrf_token": csrf}
    )
    assert gone.status_code == 303
    assert await endpoints_of(dns, user) == []
    assert await deliveries_count(dns) == 0
    assert (await browser.get(f"/settings/api/webhooks/{endpoint_id}")).status_code == 404


async def _state(runtime: Runtime, user: StudioUser) -> tuple[object, ...]:
    return (
        tuple((e.id, e.enabled, e.secret_prefix, e.url) for e in await endpoints_of(runtime, user)),
        await deliveries_count(runtime),
    )


async def _one_endpoint_with_a_delivery(browser: httpx.AsyncClient, csrf: str) -> tuple[str, str]:
    endpoint_id, _ = await add(browser, csrf)
    sent = await browser.post(
        f"/settings/api/webhooks/{endpoint_id}/test", data={"csrf_token": csrf}
    )
    page = await browser.get(sent.headers["location"])
    found = re.search(r'data-delivery-id="([0-9a-f-]{36})"', page.text)
    assert found is not None
    return endpoint_id, found.group(1)


ACTIONS = (
    ("rotate", {}),
    ("enabled", {"enabled": "false"}),
    ("test", {}),
    ("delete", {}),
    ("deliveries/{delivery}/redeliver", {}),
)


@pytest.mark.parametrize("token", [None, "forged-token"])
async def test_every_webhook_action_needs_the_csrf_token(
    dns: Runtime, browser: httpx.AsyncClient, token: str | None
) -> None:
    user = await studio_user(dns)
    csrf = await signed_in(browser, user)
    endpoint_id, delivery_id = await _one_endpoint_with_a_delivery(browser, csrf)
    before = await _state(dns, user)
    extra = {} if token is None else {"csrf_token": token}
    created = await browser.post("/settings/api/webhooks", data={**form(None), **extra})
    assert created.status_code == 403
    for action, fields in ACTIONS:
        path = f"/settings/api/webhooks/{endpoint_id}/" + action.format(delivery=delivery_id)
        response = await browser.post(path, data={**fields, **extra})
        assert response.status_code == 403, path
        assert "did not come from this site" in response.text
    assert await _state(dns, user) == before


async def test_another_accounts_endpoints_and_deliveries_are_404_everywhere(
    dns: Runtime, browser: httpx.AsyncClient, other_browser: httpx.AsyncClient
) -> None:
    owner = await studio_user(dns)
    owner_csrf = await signed_in(browser, owner)
    endpoint_id, delivery_id = await _one_endpoint_with_a_delivery(browser, owner_csrf)
    intruder = await studio_user(dns)
    csrf = await signed_in(other_browser, intruder)
    before = await _state(dns, owner)
    base = f"/settings/api/webhooks/{endpoint_id}"
    own_list = await other_browser.get("/settings/api")
    assert endpoint_id not in own_list.text
    assert HOOK not in own_list.text
    for path in (base, f"{base}/deliveries/{delivery_id}"):
        response = await other_browser.get(path)
        assert response.status_code == 404, path
        assert HOOK not in response.text
    for action, fields in ACTIONS:
        path = f"{base}/" + action.format(delivery=delivery_id)
        response = await other_browser.post(path, data={**fields, "csrf_token": csrf})
        assert response.status_code == 404, path
    assert await _state(dns, owner) == before
    # Unknown and malformed ids look the same.
    for path in (
        "/settings/api/webhooks/00000000-0000-7000-8000-000000000000",
        "/settings/api/webhooks/not-an-id",
        f"{base}/deliveries/not-an-id",
    ):
        assert (await browser.get(path)).status_code == 404, path
