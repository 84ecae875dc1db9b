"""Provider outputs are checked to be media of the model's kind before they are stored or
charged (finding 2 of the fault audit). A file URL answering an error page, markup or the
wrong kind of media is a retriable provider error (downloaded again), then `failed` with
the hold released; what is stored carries the content type we detected, never the one
the provider claimed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from tests.audit import assert_ledger_consistent
from tests.factories import account_with_key
from tests.fakes.fal import FakeFal
from tests.fakes.media import mp3_bytes, mp4_bytes, png_bytes
from tests.worker.conftest import FAST_WORKER
from tests.worker.helpers import wait_for_status
from vivix.models import Generation
from vivix.providers.fal.adapter import FalAdapter
from vivix.providers.registry import ProviderRegistry
from vivix.runtime import Runtime
from vivix.settings import ProviderSettings
from vivix.worker.runner import Worker

CATALOG = """
[[models]]
slug = "fal-image"
name = "An image model on fal"
category = "image"
creator = "test"
description = "One fal route."
[models.params]
prompt = { type = "string", required = true, max_length = 2000 }
[[models.pricing]]
credits = 10
[[models.routes]]
provider = "fal"
upstream_model = "fal-ai/flux/schnell"

[[models]]
slug = "fal-video"
name = "A video model on fal"
category = "video"
creator = "test"
description = "One fal route."
[models.params]
prompt = { type = "string", required = true, max_length = 2000 }
[[models.pricing]]
credits = 20
[[models.routes]]
provider = "fal"
upstream_model = "fal-ai/wan/v2.7/text-to-video"
"""
ROUTE_ATTEMPTS = 2


@pytest.fixture
def settings_overrides(tmp_path: Path) -> dict[str, object]:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(CATALOG)
    return {
        "worker": {
            **FAST_WORKER,
            "lease_seconds": 15.0,
            "heartbeat_seconds": 1.0,
            "route_attempts": ROUTE_ATTEMPTS,
            "route_retry_backoff_seconds": 0.01,
        },
        "providers": {"fal": {"api_key": "fal-test-key"}},
        "catalog_path": catalog,
    }


@pytest.fixture
def fal() -> FakeFal:
    return FakeFal(polls_before_done=0)


@pytest.fixture
async def worker(runtime: Runtime, fal: FakeFal) -> AsyncIterator[Worker]:
    adapter = FalAdapter.standalone(
        ProviderSettings(
            api_key=fal.api_key, base_url="http://fal.test", retry_backoff_seconds=0.01
        ),
        transport=httpx.ASGITransport(app=fal.app),
    )
    registry = ProviderRegistry({"fal": adapter})
    running = Worker(runtime, concurrency=2, registry=registry)
    await running.start()
    try:
        yield running
    finally:
        await running.stop(grace_s=0)
        await registry.aclose()


async def run_one(
    runtime: Runtime, client: httpx.AsyncClient, model: str, **account: Any
) -> tuple[dict[str, Any], dict[str, str]]:
    acct = await account_with_key(runtime, credits=100, **account)
    response = await client.post(
        "/api/v1/generate", json={"model": model, "prompt": "a lighthouse"}, headers=acct.headers
    )
    assert response.status_code == 201, response.text
    body = await wait_for_status(client, response.json()["generation_id"], acct.headers)
    return body, acct.headers


async def assert_failed_and_refunded(
    runtime: Runtime, client: httpx.AsyncClient, body: dict[str, Any], headers: dict[str, str]
) -> None:
    assert body["status"] == "failed", body
    assert body["error"] == "PROVIDER_ERROR"
    assert body["credits_used"] == 0
    credits = (await client.get("/api/v1/credits", headers=headers)).json()
    assert (credits["balance"], credits["held"]) == (100, 0)
    outputs = runtime.settings.data_dir / "outputs" / body["generation_id"]
    assert not outputs.exists() or not any(p.is_file() for p in outputs.rglob("*"))
    await assert_ledger_consistent(runtime)


NOT_MEDIA = {
    "json-error-as-json": (b'{"detail": "file expired"}', "application/json"),
    "json-error-as-png": (b'{"detail": "file expired"}', "image/png"),
    "html-as-png": (b"<!doctype html><script>alert(document.cookie)</script>", "image/png"),
    "svg": (
        b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
        "image/svg+xml",
    ),
    "javascript": (b"alert(document.cookie)", "application/javascript"),
    "truncated-png": (png_bytes(64, 48, 3)[:60], "image/png"),
    "audio-for-an-image-model": (mp3_bytes(1.0), "image/png"),
    "video-for-an-image-model": (mp4_bytes(64, 36, 1.0), "image/png"),
}


@pytest.mark.parametrize("served", list(NOT_MEDIA.values()), ids=list(NOT_MEDIA))
async def test_an_output_that_is_not_an_image_fails_the_generation_and_refunds(
    runtime: Runtime,
    client: httpx.AsyncClient,
    worker: Worker,
    fal: FakeFal,
    served: tuple[bytes, str],
) -> None:
    fal.inject_file(*served, times=ROUTE_ATTEMPTS)
    body, headers = await run_one(runtime, client, "fal-image")
    await assert_failed_and_refunded(runtime, client, body, headers)
    # Downloaded once per attempt: the same upstream job, never a second submit.
    assert fal.submissions == 1
    assert "not" in body["message"].lower()


async def test_an_image_for_a_video_model_is_refused(
    runtime: Runtime, client: httpx.AsyncClient, worker: Worker, fal: FakeFal
) -> None:
    fal.output_kind = "video"
    fal.inject_file(png_bytes(64, 48, 1), "video/mp4", times=ROUTE_ATTEMPTS)
    body, headers = await run_one(runtime, client, "fal-video")
    await assert_failed_and_refunded(runtime, client, body, headers)


async def test_a_bad_download_is_retried_and_the_real_output_kept(
    runtime: Runtime, client: httpx.AsyncClient, worker: Worker, fal: FakeFal
) -> None:
    fal.inject_file(b"<html>502 Bad Gateway</html>", "image/png")
    body, _ = await run_one(runtime, client, "fal-image")
    assert body["status"] == "completed", body
    assert body["credits_used"] == 10
    assert fal.submissions == 1
    assert [o["content_type"] for o in body["outputs"]] == ["image/png"]
    served = await client.get(body["output_url"].removeprefix("http://testserver"))
    assert served.content == next(iter(fal.files.values()))[0]  # the real PNG, not the page
    await assert_ledger_consistent(runtime)


async def test_the_stored_type_is_the_detected_one_not_the_claimed_one(
    runtime: Runtime, client: httpx.AsyncClient, worker: Worker, fal: FakeFal
) -> None:
    # A real PNG that the CDN calls a JPEG (and fal's metadata calls image/png).
    fal.inject_file(png_bytes(64, 48, 9), "image/jpeg")
    body, _ = await run_one(runtime, client, "fal-image")
    assert body["status"] == "completed", body
    output = body["outputs"][0]
    assert output["content_type"] == "image/png"
    assert (output["width"], output["height"]) == (64, 48)
    assert output["url"].endswith(".png")
    served = await client.get(output["url"].removeprefix("http://testserver"))
    assert served.status_code == 200
    assert served.headers["content-type"] == "image/png"
    assert served.content == png_bytes(64, 48, 9)


async def test_a_video_is_stored_with_its_detected_facts(
    runtime: Runtime, client: httpx.AsyncClient, worker: Worker, fal: FakeFal
) -> None:
    fal.output_kind = "video"
    fal.inject_file(mp4_bytes(64, 36, 1.0), "application/octet-stream")
    body, _ = await run_one(runtime, client, "fal-video")
    assert body["status"] == "completed", body
    output = body["outputs"][0]
    assert output["content_type"] == "video/mp4"
    assert (output["width"], output["height"]) == (64, 36)
    assert output["duration_s"] == pytest.approx(1.0, abs=0.2)
    async with runtime.db.read() as session:
        stored = (
            await session.execute(
                select(Generation.outputs).where(Generation.id == body["generation_id"])
            )
        ).scalar_one()
    assert stored[0]["key"].endswith(".mp4")
