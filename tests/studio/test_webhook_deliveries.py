"""The delivery log in the Studio against a real receiver on this machine (insecure targets
allowed here): a test event sent by the worker's sender, its failed and successful
attempts with status, latency, error and response, and a redelivery from the page."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.studio.helpers import signed_in, studio_user
from tests.webhooks.receiver import Answer, Receiver, wait_until
from vivix.runtime import Runtime
from vivix.webhooks.sender import WebhookSender


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {
        "worker": {"poll_interval_seconds": 0.2},
        "webhooks": {
            "allow_insecure_targets": True,
            "retry_schedule": "0.2,0.2",
            "timeout_seconds": 2.0,
        },
    }


@pytest.fixture
async def sender(runtime: Runtime) -> AsyncIterator[WebhookSender]:
    running = WebhookSender(runtime, "studio-test-sender")
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
def receiver() -> AsyncIterator[Receiver]:
    with Receiver() as running:
        yield running  # type: ignore[misc]


async def test_the_log_shows_each_attempt_and_redeliver_sends_again(
    runtime: Runtime, browser: httpx.AsyncClient, receiver: Receiver, sender: WebhookSender
) -> None:
    user = await studio_user(runtime)
    csrf = await signed_in(browser, user)
    receiver.plan = [Answer(503, body=b"busy, try later"), Answer(200, body=b"thanks")]
    created = await browser.post(
        "/settings/api/webhooks",
        data={
            "csrf_token": csrf,
            "url": receiver.url,
            "events_shown": "1",
            "events": ["generation.completed"],
        },
    )
    assert created.status_code == 201, created.text
    endpoint_id = re.findall(r'data-webhook-id="([0-9a-f-]{36})"', created.text)[-1]
    base = f"/settings/api/webhooks/{endpoint_id}"
    await browser.post(f"{base}/test", data={"csrf_token": csrf})
    await wait_until(lambda: len(receiver.hooks()) == 2, what="a failed then a good attempt")

    async def log() -> str:
        return (await browser.get(base)).text

    for _ in range(100):
        page = await log()
        if 'data-status="succeeded"' in page:
            break
        await asyncio.sleep(0.05)
    assert 'data-status="succeeded"' in page
    assert "Delivered" in page
    assert 'hx-trigger="every 2s"' not in page  # nothing pending: the log stops refreshing
    delivery_id = re.search(r'data-delivery-id="([0-9a-f-]{36})"', page)
    assert delivery_id is not None
    assert re.search(
        r'<span class="code-pill code-ok">200</span> <span class="muted small">\d+ ms', page
    )
    detail = (await browser.get(f"{base}/deliveries/{delivery_id.group(1)}")).text
    attempts = re.findall(r'<span class="code-pill code-(?:ok|bad)">(\d+)</span>', detail)
    assert attempts[:2] == ["200", "503"]  # newest first
    assert "busy, try later" in detail
    assert "thanks" in detail
    assert re.search(r"\d+ ms", detail)

    redone = await browser.post(
        f"{base}/deliveries/{delivery_id.group(1)}/redeliver", data={"csrf_token": csrf}
    )
    assert redone.status_code == 303
    await wait_until(lambda: len(receiver.hooks()) == 3, what="the redelivery")
    ids = {r.headers["x-vivix-delivery-id"] for r in receiver.hooks()}
    assert ids == {delivery_id.group(1)}  # same delivery, same id
    for _ in range(100):
        detail = (await browser.get(redone.headers["location"])).text
        if len(re.findall(r'class="attempt"', detail)) == 3:
            break
        await asyncio.sleep(0.05)
    assert len(re.findall(r'class="attempt"', detail)) == 3


async def test_a_refused_connection_is_shown_as_an_error(
    runtime: Runtime, browser: httpx.AsyncClient, sender: WebhookSender
) -> None:
    with Receiver() as closed:
        url = closed.url
    user = await studio_user(runtime)
    csrf = await signed_in(browser, user)
    created = await browser.post(
        "/settings/api/webhooks",
        data={"csrf_token": csrf, "url": url, "events_shown": "1", "events": ["generation.failed"]},
    )
    endpoint_id = re.findall(r'data-webhook-id="([0-9a-f-]{36})"', created.text)[-1]
    base = f"/settings/api/webhooks/{endpoint_id}"
    await browser.post(f"{base}/test", data={"csrf_token": csrf})
    page = ""
    for _ in range(200):
        page = (await browser.get(base)).text
        if 'data-status="failed"' in page:
            break
        await asyncio.sleep(0.05)
    assert 'data-status="failed"' in page
    assert 'class="delivery-error small"' in page
    assert "no response" in page
