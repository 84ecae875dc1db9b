"""Delivering webhooks to a real HTTP server on this machine (insecure targets allowed
here; the egress guard has its own tests): headers and both signature schemes checked by
the receiving side's own code (`receiver.py`), the payload, rotation overlap, retries with
the same delivery id, 410, redirects, timeouts, redeliver, and who gets which event."""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from tests.factories import AccountWithKey, account_with_key
from tests.webhooks.receiver import (
    Answer,
    Receiver,
    standard_signature_entries,
    verify_vivix_signature,
    wait_until,
)
from vivix.accounts import repository as accounts_repository
from vivix.accounts.service import caller_from_row, hash_key
from vivix.generations import service as generations
from vivix.kit.clock import utcnow
from vivix.models import WebhookDelivery, WebhookEndpoint
from vivix.providers.registry import ProviderRegistry
from vivix.runtime import Runtime
from vivix.webhooks.sender import WebhookSender
from vivix.worker.runner import Worker

IMAGE = {"model": "vivix-local-image", "prompt": "a lighthouse in fog"}


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {
        "worker": {"poll_interval_seconds": 0.2, "lease_seconds": 5.0, "heartbeat_seconds": 1.0},
        "webhooks": {
            "allow_insecure_targets": True,
            "retry_schedule": "0.2,0.2,0.2",
            "timeout_seconds": 1.0,
        },
    }


@pytest.fixture
async def sender(runtime: Runtime) -> Any:
    running = WebhookSender(runtime, "test-sender")
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


async def endpoint(
    client: httpx.AsyncClient, acct: AccountWithKey, url: str, **fields: Any
) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/webhooks", json={"url": url, **fields}, headers=acct.headers
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def delivery(
    client: httpx.AsyncClient, acct: AccountWithKey, webhook_id: str, delivery_id: str
) -> dict[str, Any]:
    response = await client.get(
        f"/api/v1/webhooks/{webhook_id}/deliveries/{delivery_id}", headers=acct.headers
    )
    assert response.status_code == 200, response.text
    shown: dict[str, Any] = response.json()
    return shown


async def settled(
    client: httpx.AsyncClient, acct: AccountWithKey, webhook_id: str, delivery_id: str
) -> dict[str, Any]:
    shown: dict[str, Any] = {}

    async def done() -> bool:
        nonlocal shown
        shown = await delivery(client, acct, webhook_id, delivery_id)
        return shown["status"] != "pending"

    for _ in range(300):
        if await done():
            return shown
        import asyncio

        await asyncio.sleep(0.05)
    raise AssertionError(f"delivery still pending: {shown}")


async def test_a_completed_generation_is_delivered_signed_both_ways(
    runtime: Runtime,
    client: httpx.AsyncClient,
    receiver: Receiver,
    local_registry: ProviderRegistry,
) -> None:
    acct = await account_with_key(runtime, credits=1000)
    hook = await endpoint(client, acct, receiver.url)
    worker = Worker(runtime, concurrency=1, registry=local_registry)
    await worker.start()
    try:
        submitted = await client.post("/api/v1/generate", json=IMAGE, headers=acct.headers)
        generation_id = submitted.json()["generation_id"]
        await wait_until(lambda: len(receiver.hooks()) == 1, what="the delivery")
    finally:
        await worker.stop(grace_s=0)
    [got] = receiver.hooks()
    headers = got.headers
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == "Vivix-Webhook/1.0"
    assert headers["x-vivix-event"] == "generation.completed"
    assert headers["webhook-id"] == headers["x-vivix-delivery-id"]
    assert abs(int(headers["webhook-timestamp"]) - utcnow().timestamp()) < 60
    assert verify_vivix_signature(hook["secret"], got)
    assert standard_signature_entries(hook["secret"], got) == [True]
    assert not verify_vivix_signature("whsec_" + "A" * 44, got)

    payload = json.loads(got.body)
    shown = (await client.get(f"/api/v1/generations/{generation_id}", headers=acct.headers)).json()
    assert payload["event"] == "generation.completed"
    assert payload["credits_charged"] == shown["credits_used"]
    for name, value in shown.items():
        assert payload[name] == value, name
    assert payload["output_url"] == shown["output_urls"][0]
    # The delivery as the API shows it, with the exact body sent.
    page = (
        await client.get(
            f"/api/v1/webhooks/{hook['id']}/deliveries?generation_id={generation_id}",
            headers=acct.headers,
        )
    ).json()
    [listed] = page["data"]
    assert listed["id"] == headers["x-vivix-delivery-id"]
    detail = await settled(client, acct, hook["id"], listed["id"])
    assert detail["status"] == "succeeded"
    assert detail["request_body"].encode() == got.body
    assert detail["attempts"] == 1
    [attempt] = detail["attempt_log"]
    assert (attempt["status_code"], attempt["error"], attempt["response_body"]) == (200, None, "ok")
    assert detail["last_latency_ms"] == attempt["latency_ms"] >= 0
    assert detail["delivered_at"] is not None


async def test_a_canceled_generation_fires_generation_canceled_to_subscribers_only(
    runtime: Runtime, client: httpx.AsyncClient, receiver: Receiver, sender: WebhookSender
) -> None:
    acct = await account_with_key(runtime, credits=1000)
    everything = await endpoint(client, acct, receiver.url)
    await endpoint(client, acct, receiver.url + "?failed", events=["generation.failed"])
    disabled = await endpoint(client, acct, receiver.url + "?off")
    await client.patch(
        f"/api/v1/webhooks/{disabled['id']}", json={"enabled": False}, headers=acct.headers
    )
    other = await account_with_key(runtime, credits=1000)
    await endpoint(client, other, receiver.url + "?other")

    generation_id = (
        await client.post("/api/v1/generate", json=IMAGE, headers=acct.headers)
    ).json()["generation_id"]
    canceled = await client.post(
        f"/api/v1/generations/{generation_id}/cancel", headers=acct.headers
    )
    assert canceled.status_code == 200
    await wait_until(lambda: len(receiver.received) >= 1, what="the delivery")
    [got] = receiver.received
    assert got.path == "/hook"
    payload = json.loads(got.body)
    assert (payload["event"], payload["status"], payload["generation_id"]) == (
        "generation.canceled",
        "canceled",
        generation_id,
    )
    assert (payload["credits_charged"], payload["output_url"], payload["output_urls"]) == (
        0,
        None,
        None,
    )
    assert "error_code" not in payload
    assert verify_vivix_signature(everything["secret"], got)
    async with runtime.db.read() as session:
        assert await session.scalar(select(func.count()).select_from(WebhookDelivery)) == 1


async def test_a_failed_generation_carries_the_getvivix_error_aliases(
    runtime: Runtime, client: httpx.AsyncClient, receiver: Receiver, sender: WebhookSender
) -> None:
    from vivix.generations.finish import FinalState, commit_final_state
    from vivix.models import Generation

    acct = await account_with_key(runtime, credits=1000)
    hook = await endpoint(client, acct, receiver.url)
    generation_id = (
        await client.post("/api/v1/generate", json=IMAGE, headers=acct.headers)
    ).json()["generation_id"]

    async def lock(session: Any) -> Generation | None:
        return await session.get(Generation, generation_id)

    await commit_final_state(
        runtime, lock, FinalState.failed("CONTENT_REJECTED", "The provider refused it.")
    )
    await wait_until(lambda: len(receiver.hooks()) == 1, what="the delivery")
    payload = json.loads(receiver.hooks()[0].body)
    assert payload["event"] == "generation.failed"
    assert (payload["error"], payload["error_code"]) == ("CONTENT_REJECTED", "CONTENT_REJECTED")
    assert payload["error_message"] == payload["message"] == "The provider refused it."
    assert (payload["credits_charged"], payload["output_url"]) == (0, None)
    assert verify_vivix_signature(hook["secret"], receiver.hooks()[0])


async def test_studio_generations_reach_only_endpoints_with_include_studio(
    runtime: Runtime, client: httpx.AsyncClient, receiver: Receiver, sender: WebhookSender
) -> None:
    acct = await account_with_key(runtime, credits=1000)
    await endpoint(client, acct, receiver.url + "?api-only")
    await endpoint(client, acct, receiver.url, include_studio=True)
    async with runtime.db.autocommit() as connection:
        row = await accounts_repository.get_caller(connection, hash_key(runtime.secret, acct.key))
    api_caller = caller_from_row(row, runtime.settings)
    studio_caller = dataclasses.replace(api_caller, key_id=None, source="studio")
    submitted = await generations.submit(runtime, studio_caller, dict(IMAGE), None)
    await generations.cancel(runtime, acct.id, submitted.generation_id)
    await wait_until(lambda: len(receiver.received) >= 1, what="the delivery")
    assert [r.path for r in receiver.received] == ["/hook"]
    assert json.loads(receiver.received[0].body)["source"] == "studio"


async def test_rotation_signs_with_both_secrets_until_the_old_one_expires(
    runtime: Runtime, client: httpx.AsyncClient, receiver: Receiver, sender: WebhookSender
) -> None:
    acct = await account_with_key(runtime)
    hook = await endpoint(client, acct, receiver.url)
    base = f"/api/v1/webhooks/{hook['id']}"
    rotated = (await client.post(f"{base}/rotate-secret", headers=acct.headers)).json()
    old, new = hook["secret"], rotated["secret"]
    await client.post(f"{base}/test", headers=acct.headers)
    await wait_until(lambda: len(receiver.hooks()) == 1, what="the first test delivery")
    first = receiver.hooks()[0]
    assert first.headers["x-vivix-event"] == "webhook.test"
    assert len(first.headers["webhook-signature"].split(" ")) == 2
    assert standard_signature_entries(new, first) == [True, False]
    assert standard_signature_entries(old, first) == [False, True]
    assert verify_vivix_signature(new, first)

    await client.post(
        f"{base}/rotate-secret", json={"expire_previous_now": True}, headers=acct.headers
    )
    newest = (await client.get(base.rsplit("/", 1)[0], headers=acct.headers)).json()["data"][0]
    await client.post(f"{base}/test", headers=acct.headers)
    await wait_until(lambda: len(receiver.hooks()) == 2, what="the second test delivery")
    second = receiver.hooks()[1]
    assert len(second.headers["webhook-signature"].split(" ")) == 1
    assert standard_signature_entries(new, second) == [False]
    assert not verify_vivix_signature(new, second)
    assert second.headers["x-vivix-signature"].startswith("sha256=")
    assert newest["secret_prefix"] != rotated["secret_prefix"]


async def test_a_receiver_failing_twice_gets_the_same_delivery_id_three_times(
    runtime: Runtime, client: httpx.AsyncClient, receiver: Receiver, sender: WebhookSender
) -> None:
    acct = await account_with_key(runtime)
    hook = await endpoint(client, acct, receiver.url)
    receiver.plan = [Answer(500, body=b"boom"), Answer(503)]
    queued = (await client.post(f"/api/v1/webhooks/{hook['id']}/test", headers=acct.headers)).json()
    detail = await settled(client, acct, hook["id"], queued["id"])
    assert detail["status"] == "succeeded"
    got = receiver.hooks()
    assert len(got) == 3
    assert {r.headers["x-vivix-delivery-id"] for r in got} == {queued["id"]}
    assert {r.headers["webhook-id"] for r in got} == {queued["id"]}
    assert len({r.body for r in got}) == 1
    for each in got:  # each attempt signed afresh, each verifying
        assert verify_vivix_signature(hook["secret"], each)
        assert standard_signature_entries(hook["secret"], each) == [True]
    assert detail["attempts"] == 3
    assert [a["status_code"] for a in detail["attempt_log"]] == [500, 503, 200]
    assert detail["attempt_log"][0]["response_body"] == "boom"
    assert detail["attempt_log"][0]["error"] == "HTTP 500"


async def test_a_receiver_that_never_succeeds_fails_the_delivery_after_the_schedule(
    runtime: Runtime, client: httpx.AsyncClient, receiver: Receiver, sender: WebhookSender
) -> None:
    acct = await account_with_key(runtime)
    hook = await endpoint(client, acct, receiver.url)
    receiver.plan = [Answer(500)] * 10
    queued = (await client.post(f"/api/v1/webhooks/{hook['id']}/test", headers=acct.headers)).json()
    detail = await settled(client, acct, hook["id"], queued["id"])
    # Three retries on the schedule "0.2,0.2,0.2": four attempts, then failed.
    assert (detail["status"], detail["attempts"], len(receiver.hooks())) == ("failed", 4, 4)
    assert (detail["last_status_code"], detail["next_attempt_at"]) == (500, None)
    shown = (await client.get("/api/v1/webhooks", headers=acct.headers)).json()["data"][0]
    assert shown["enabled"] is True  # failing for less than 5 days


async def test_410_gone_disables_the_endpoint_at_once(
    runtime: Runtime, client: httpx.AsyncClient, receiver: Receiver, sender: WebhookSender
) -> None:
    acct = await account_with_key(runtime)
    hook = await endpoint(client, acct, receiver.url)
    receiver.plan = [Answer(410)]
    queued = (await client.post(f"/api/v1/webhooks/{hook['id']}/test", headers=acct.headers)).json()
    detail = await settled(client, acct, hook["id"], queued["id"])
    assert (detail["status"], detail["attempts"], detail["last_status_code"]) == ("failed", 1, 410)
    shown = (await client.get("/api/v1/webhooks", headers=acct.headers)).json()["data"][0]
    assert shown["enabled"] is False
    assert "410" in shown["disabled_reason"]
    # A disabled endpoint is sent nothing until it is enabled again.
    later = (await client.post(f"/api/v1/webhooks/{hook['id']}/test", headers=acct.headers)).json()
    import asyncio

    await asyncio.sleep(0.6)
    assert len(receiver.hooks()) == 1
    await client.patch(
        f"/api/v1/webhooks/{hook['id']}", json={"enabled": True}, headers=acct.headers
    )
    assert (await settled(client, acct, hook["id"], later["id"]))["status"] == "succeeded"


async def test_redirects_are_not_followed(
    runtime: Runtime, client: httpx.AsyncClient, receiver: Receiver, sender: WebhookSender
) -> None:
    acct = await account_with_key(runtime)
    hook = await endpoint(client, acct, receiver.url)
    target = receiver.url.replace("/hook", "/elsewhere")
    receiver.plan = [Answer(307, {"Location": target})] * 10
    queued = (await client.post(f"/api/v1/webhooks/{hook['id']}/test", headers=acct.headers)).json()
    detail = await settled(client, acct, hook["id"], queued["id"])
    assert detail["status"] == "failed"
    assert all(r.path == "/hook" for r in receiver.received)
    assert detail["attempt_log"][0]["status_code"] == 307
    assert "not followed" in detail["attempt_log"][0]["error"]


async def test_a_slow_receiver_times_out_and_is_retried(
    runtime: Runtime, client: httpx.AsyncClient, receiver: Receiver, sender: WebhookSender
) -> None:
    acct = await account_with_key(runtime)
    hook = await endpoint(client, acct, receiver.url)
    receiver.plan = [Answer(200, delay_s=2.5)]  # the timeout is 1 s
    queued = (await client.post(f"/api/v1/webhooks/{hook['id']}/test", headers=acct.headers)).json()
    detail = await settled(client, acct, hook["id"], queued["id"])
    assert detail["status"] == "succeeded"
    first, second = detail["attempt_log"]
    assert first["status_code"] is None
    assert "timed out after 1 s" in first["error"]
    assert 900 <= first["latency_ms"] < 2400
    assert second["status_code"] == 200


async def test_redeliver_sends_the_same_delivery_again(
    runtime: Runtime, client: httpx.AsyncClient, receiver: Receiver, sender: WebhookSender
) -> None:
    acct = await account_with_key(runtime)
    hook = await endpoint(client, acct, receiver.url)
    base = f"/api/v1/webhooks/{hook['id']}"
    queued = (await client.post(f"{base}/test", headers=acct.headers)).json()
    await settled(client, acct, hook["id"], queued["id"])
    again = await client.post(f"{base}/deliveries/{queued['id']}/redeliver", headers=acct.headers)
    assert again.status_code == 200
    assert again.json()["status"] == "pending"
    await wait_until(lambda: len(receiver.hooks()) == 2, what="the redelivery")
    first, second = receiver.hooks()
    assert first.headers["x-vivix-delivery-id"] == second.headers["x-vivix-delivery-id"]
    assert first.body == second.body
    detail = await settled(client, acct, hook["id"], queued["id"])
    assert (detail["status"], detail["attempts"], len(detail["attempt_log"])) == (
        "succeeded",
        2,
        2,
    )


async def test_an_endpoint_failing_for_five_days_is_disabled(
    runtime: Runtime, client: httpx.AsyncClient, receiver: Receiver, sender: WebhookSender
) -> None:
    acct = await account_with_key(runtime)
    hook = await endpoint(client, acct, receiver.url)
    # Its attempts have failed since 5 days and a minute ago (as if the clock had run).
    async with runtime.db.transaction() as session:
        await session.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.id == hook["id"])
            .values(failing_since=utcnow() - timedelta(days=5, minutes=1))
        )
    receiver.plan = [Answer(500)]
    queued = (await client.post(f"/api/v1/webhooks/{hook['id']}/test", headers=acct.headers)).json()
    await wait_until(lambda: len(receiver.hooks()) == 1, what="the attempt")
    shown: dict[str, Any] = {}
    for _ in range(100):
        shown = (await client.get("/api/v1/webhooks", headers=acct.headers)).json()["data"][0]
        if not shown["enabled"]:
            break
        import asyncio

        await asyncio.sleep(0.05)
    assert shown["enabled"] is False
    assert "5 days" in shown["disabled_reason"]
    detail = await delivery(client, acct, hook["id"], queued["id"])
    assert detail["status"] == "pending"  # it waits for the endpoint to be enabled again
