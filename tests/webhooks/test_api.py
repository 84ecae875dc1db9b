"""Every /api/v1/webhooks route of API.md §5.1: statuses, error codes and field names,
ownership (another account's ids are 404 WEBHOOK_NOT_FOUND, like unknown ones), the
5-endpoint limit, secrets shown once and encrypted at rest, rotation with its overlap.
Targets here are https URLs whose names resolve, through the runtime's resolver, to a
public address: nothing is sent (no worker runs)."""

from __future__ import annotations

import base64
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text

from tests.factories import AccountWithKey, account_with_key
from vivix.kit.clock import parse_iso, utcnow
from vivix.models import WebhookDelivery
from vivix.runtime import Runtime

PUBLIC = "93.184.216.34"
HOOK = "https://hooks.example.com/vivix"


async def public_dns(host: str, port: int, /) -> list[str]:
    return {"hooks.example.com": [PUBLIC], "other.example.com": [PUBLIC]}.get(host, [])


@pytest.fixture
def dns(runtime: Runtime) -> Runtime:
    runtime.resolver = public_dns
    return runtime


async def create(client: httpx.AsyncClient, acct: AccountWithKey, **body: Any) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/webhooks", json={"url": HOOK, **body}, headers=acct.headers
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def test_create_shows_the_secret_once_and_lists_only_its_prefix(
    dns: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(dns)
    response = await client.post(
        "/api/v1/webhooks",
        json={"url": HOOK, "description": "prod", "include_studio": True},
        headers=acct.headers,
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert response.headers["location"] == f"/api/v1/webhooks/{created['id']}"
    assert response.headers["x-ratelimit-remaining"].isdigit()
    secret = created["secret"]
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 32
    assert created["secret_prefix"] == secret[:12]
    assert created["events"] == [
        "generation.completed",
        "generation.failed",
        "generation.canceled",
    ]
    assert (created["url"], created["description"], created["include_studio"]) == (
        HOOK,
        "prod",
        True,
    )
    assert (created["enabled"], created["disabled_reason"]) == (True, None)

    listed = (await client.get("/api/v1/webhooks", headers=acct.headers)).json()["data"]
    assert [w["id"] for w in listed] == [created["id"]]
    assert "secret" not in listed[0]
    assert set(listed[0]) == {
        "id",
        "url",
        "description",
        "events",
        "include_studio",
        "enabled",
        "disabled_reason",
        "secret_prefix",
        "created_at",
    }
    # At rest the secret is encrypted: neither it nor its random part is in the row.
    async with dns.db.read() as session:
        row = (
            await session.execute(
                text("SELECT * FROM webhook_endpoints WHERE id = :id"), {"id": created["id"]}
            )
        ).one()
    stored = " ".join(str(value) for value in row)
    assert secret not in stored
    assert secret.removeprefix("whsec_") not in stored


async def test_a_sixth_endpoint_is_409_webhook_limit(
    dns: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(dns)
    for _ in range(5):
        await create(client, acct)
    response = await client.post("/api/v1/webhooks", json={"url": HOOK}, headers=acct.headers)
    assert response.status_code == 409
    assert response.json()["error"] == "WEBHOOK_LIMIT"
    assert response.json()["limit"] == 5
    # Another account has its own five.
    other = await account_with_key(dns)
    await create(client, other)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://hooks.example.com/vivix", "https"),
        ("ftp://hooks.example.com/x", "https"),
        ("not a url", ""),
        ("https://", ""),
        ("https://user:pw@hooks.example.com/", "credentials"),
        ("https://unknown.example.com/", "resolve"),
        ("https://127.0.0.1/hook", "loopback"),
        ("https://[::1]/hook", "loopback"),
        ("https://169.254.169.254/latest", "metadata"),
        ("https://10.1.2.3/hook", "private"),
        ("https://" + "a" * 2100 + ".com/", ""),
    ],
)
async def test_a_bad_or_forbidden_url_is_422_on_field_url(
    dns: Runtime, client: httpx.AsyncClient, url: str, reason: str
) -> None:
    acct = await account_with_key(dns)
    response = await client.post("/api/v1/webhooks", json={"url": url}, headers=acct.headers)
    assert response.status_code == 422, response.text
    body = response.json()
    assert (body["error"], body["field"]) == ("INVALID_PARAMS", "url")
    assert reason in body["reason"]
    async with dns.db.read() as session:
        count = await session.scalar(text("SELECT count(*) FROM webhook_endpoints"))
    assert count == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "url"),
        ({"url": 5}, "url"),
        ({"url": HOOK, "events": []}, "events"),
        ({"url": HOOK, "events": ["generation.started"]}, "events"),
        ({"url": HOOK, "events": "generation.completed"}, "events"),
        ({"url": HOOK, "description": 7}, "description"),
        ({"url": HOOK, "include_studio": "yes"}, "include_studio"),
        ({"url": HOOK, "enabled": False}, "enabled"),
        ({"url": HOOK, "secret": "whsec_mine"}, "secret"),
    ],
)
async def test_invalid_create_bodies_name_the_field(
    dns: Runtime, client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    acct = await account_with_key(dns)
    response = await client.post("/api/v1/webhooks", json=body, headers=acct.headers)
    assert response.status_code == 422, response.text
    assert (response.json()["error"], response.json()["field"]) == ("INVALID_PARAMS", field)


async def test_non_json_bodies_get_the_documented_errors(
    dns: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(dns)
    response = await client.post(
        "/api/v1/webhooks", content=b"url=x", headers={**acct.headers, "content-type": "text/plain"}
    )
    assert (response.status_code, response.json()["error"]) == (415, "UNSUPPORTED_MEDIA_TYPE")
    response = await client.post(
        "/api/v1/webhooks",
        content=b"{not json",
        headers={**acct.headers, "content-type": "application/json"},
    )
    assert (response.status_code, response.json()["error"]) == (400, "INVALID_JSON")
    response = await client.get("/api/v1/webhooks")
    assert (response.status_code, response.json()["error"]) == (401, "UNAUTHORIZED")


async def test_patch_changes_the_given_fields_and_re_checks_the_url(
    dns: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(dns)
    created = await create(client, acct)
    path = f"/api/v1/webhooks/{created['id']}"
    response = await client.patch(
        path,
        json={
            "url": "https://other.example.com/x",
            "events": ["generation.failed"],
            "description": "only failures",
            "include_studio": True,
            "enabled": False,
        },
        headers=acct.headers,
    )
    assert response.status_code == 200, response.text
    changed = response.json()
    assert changed["url"] == "https://other.example.com/x"
    assert changed["events"] == ["generation.failed"]
    assert (changed["description"], changed["include_studio"], changed["enabled"]) == (
        "only failures",
        True,
        False,
    )
    assert changed["secret_prefix"] == created["secret_prefix"]
    refused = await client.patch(path, json={"url": "https://10.0.0.1/"}, headers=acct.headers)
    assert (refused.status_code, refused.json()["field"]) == (422, "url")
    unknown = await client.patch(path, json={"secret": "x"}, headers=acct.headers)
    assert (unknown.status_code, unknown.json()["field"]) == (422, "secret")
    enabled = await client.patch(path, json={"enabled": True}, headers=acct.headers)
    assert (enabled.json()["enabled"], enabled.json()["disabled_reason"]) == (True, None)
    listed = (await client.get("/api/v1/webhooks", headers=acct.headers)).json()["data"]
    assert listed[0]["url"] == "https://other.example.com/x"


async def test_rotation_returns_a_new_secret_and_keeps_the_old_one_24_hours(
    dns: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(dns)
    created = await create(client, acct)
    path = f"/api/v1/webhooks/{created['id']}/rotate-secret"
    response = await client.post(path, headers=acct.headers)  # no body at all
    assert response.status_code == 200, response.text
    rotated = response.json()
    assert rotated["secret"].startswith("whsec_")
    assert rotated["secret"] != created["secret"]
    assert rotated["secret_prefix"] == rotated["secret"][:12]
    expires = parse_iso(rotated["previous_secret_expires_at"])
    assert abs(expires - (utcnow() + timedelta(hours=24))) < timedelta(minutes=1)

    now = await client.post(path, json={"expire_previous_now": True}, headers=acct.headers)
    assert now.status_code == 200, now.text
    assert now.json()["previous_secret_expires_at"] is None
    bad = await client.post(path, json={"expire_previous_now": "yes"}, headers=acct.headers)
    assert (bad.status_code, bad.json()["field"]) == (422, "expire_previous_now")


async def test_test_delivery_is_queued_listed_and_shown_with_its_body(
    dns: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(dns)
    created = await create(client, acct)
    base = f"/api/v1/webhooks/{created['id']}"
    response = await client.post(f"{base}/test", headers=acct.headers)
    assert response.status_code == 201, response.text
    delivery = response.json()
    assert (delivery["event"], delivery["status"], delivery["attempts"]) == (
        "webhook.test",
        "pending",
        0,
    )
    assert delivery["generation_id"] is None
    page = (await client.get(f"{base}/deliveries", headers=acct.headers)).json()
    assert [d["id"] for d in page["data"]] == [delivery["id"]]
    assert (page["has_more"], page["next_cursor"]) == (False, None)
    shown = (await client.get(f"{base}/deliveries/{delivery['id']}", headers=acct.headers)).json()
    assert shown["attempt_log"] == []
    assert '"event":"webhook.test"' in shown["request_body"]
    redelivered = await client.post(
        f"{base}/deliveries/{delivery['id']}/redeliver", headers=acct.headers
    )
    assert redelivered.status_code == 200, redelivered.text
    assert redelivered.json()["id"] == delivery["id"]


async def test_deliveries_page_newest_first_and_filter(
    dns: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(dns)
    created = await create(client, acct)
    base = f"/api/v1/webhooks/{created['id']}"
    ids = [(await client.post(f"{base}/test", headers=acct.headers)).json()["id"] for _ in range(3)]
    first = (await client.get(f"{base}/deliveries?limit=2", headers=acct.headers)).json()
    assert [d["id"] for d in first["data"]] == ids[::-1][:2]
    assert first["has_more"] is True
    rest = (
        await client.get(
            f"{base}/deliveries?limit=2&cursor={first['next_cursor']}", headers=acct.headers
        )
    ).json()
    assert [d["id"] for d in rest["data"]] == [ids[0]]
    assert rest["has_more"] is False
    none = await client.get(f"{base}/deliveries?status=succeeded", headers=acct.headers)
    assert none.json()["data"] == []
    for query, field in (
        ("status=done", "status"),
        ("limit=0", "limit"),
        ("cursor=zzz", "cursor"),
        ("generation_id=nope", "generation_id"),
    ):
        bad = await client.get(f"{base}/deliveries?{query}", headers=acct.headers)
        assert (bad.status_code, bad.json()["field"]) == (422, field), query


async def test_delete_is_204_and_drops_pending_deliveries(
    dns: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(dns)
    created = await create(client, acct)
    base = f"/api/v1/webhooks/{created['id']}"
    await client.post(f"{base}/test", headers=acct.headers)
    response = await client.delete(base, headers=acct.headers)
    assert response.status_code == 204
    assert response.content == b""
    async with dns.db.read() as session:
        left = await session.scalar(select(func.count()).select_from(WebhookDelivery))
    assert left == 0
    again = await client.delete(base, headers=acct.headers)
    assert (again.status_code, again.json()["error"]) == (404, "WEBHOOK_NOT_FOUND")
    assert (await client.get("/api/v1/webhooks", headers=acct.headers)).json()["data"] == []


async def test_foreign_and_unknown_ids_are_404_webhook_not_found(
    dns: Runtime, client: httpx.AsyncClient
) -> None:
    owner = await account_with_key(dns)
    stranger = await account_with_key(dns)
    created = await create(client, owner)
    mine = await create(client, stranger)
    base = f"/api/v1/webhooks/{created['id']}"
    delivery = (await client.post(f"{base}/test", headers=owner.headers)).json()["id"]
    unknown = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
    attempts = [
        ("PATCH", base, {"description": "mine now"}),
        ("DELETE", base, None),
        ("POST", f"{base}/rotate-secret", {}),
        ("POST", f"{base}/test", None),
        ("GET", f"{base}/deliveries", None),
        ("GET", f"{base}/deliveries/{delivery}", None),
        ("POST", f"{base}/deliveries/{delivery}/redeliver", None),
        # The stranger's own endpoint with the owner's delivery id.
        ("GET", f"/api/v1/webhooks/{mine['id']}/deliveries/{delivery}", None),
        ("POST", f"/api/v1/webhooks/{mine['id']}/deliveries/{delivery}/redeliver", None),
        ("GET", f"/api/v1/webhooks/{unknown}/deliveries", None),
        ("GET", f"/api/v1/webhooks/{mine['id']}/deliveries/{unknown}", None),
        ("PATCH", "/api/v1/webhooks/not-a-uuid", {"enabled": True}),
        ("GET", f"/api/v1/webhooks/{mine['id']}/deliveries/not-a-uuid", None),
    ]
    for method, path, body in attempts:
        response = await client.request(method, path, json=body, headers=stranger.headers)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["error"] == "WEBHOOK_NOT_FOUND", (method, path)
    # Nothing changed for the owner.
    listed = (await client.get("/api/v1/webhooks", headers=owner.headers)).json()["data"]
    assert listed[0]["description"] == ""
    assert listed[0]["secret_prefix"] == created["secret_prefix"]
