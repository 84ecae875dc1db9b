"""Real provider routes through the worker: mirrors, circuits, rejections, deadlines.

Upstreams are the protocol-faithful fal and Replicate fakes (tests/fakes), reached by
the real adapters over an in-process transport."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from tests.audit import assert_ledger_consistent
from tests.factories import account_with_key
from tests.fakes.fal import FakeFal
from tests.fakes.replicate import FakeReplicate
from tests.worker.conftest import FAST_WORKER
from tests.worker.helpers import wait_for_status
from vivix.kit.runtime import Runtime
from vivix.models import Generation, ProviderCircuit
from vivix.providers.fal.adapter import FalAdapter
from vivix.providers.local.adapter import LocalAdapter
from vivix.providers.registry import ProviderRegistry
from vivix.providers.replicate.adapter import ReplicateAdapter
from vivix.worker.runner import Worker

SLOW_MODEL = """
[[models]]
slug = "slow-seedream"
name = "Seedream with a short deadline"
category = "image"
creator = "test"
description = "A fal route and a 1 second deadline."
deadline_seconds = 1
[models.params]
prompt = { type = "string", required = true, max_length = 2000 }
[[models.pricing]]
credits = 10
[[models.routes]]
provider = "fal"
upstream_model = "fal-ai/bytedance/seedream/v4/text-to-image"
"""


@pytest.fixture
def settings_overrides(tmp_path: Path) -> dict[str, object]:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(SLOW_MODEL)
    return {
        "worker": {**FAST_WORKER, "route_attempts": 2, "route_retry_backoff_seconds": 0.01},
        "circuit": {"failure_threshold": 2, "cooldown_seconds": 1.0},
        "providers": {
            "fal": {"api_key": "fal-test-key"},
            "replicate": {"api_key": "r8_test_token"},
        },
        "catalog_path": catalog,
    }


@pytest.fixture
def fal() -> FakeFal:
    return FakeFal(outputs=2, polls_before_done=1)


@pytest.fixture
def replicate() -> FakeReplicate:
    return FakeReplicate(outputs=2, polls_before_done=1)


@pytest.fixture
async def worker(
    runtime: Runtime, fal: FakeFal, replicate: FakeReplicate, tmp_path: Path
) -> AsyncIterator[Worker]:
    registry = ProviderRegistry(
        {
            "local": LocalAdapter(tmp_path / "scratch", processes=1),
            "fal": FalAdapter(
                api_key="fal-test-key",
                base_url="http://fal.test",
                transport=httpx.ASGITransport(app=fal.app),
                poll_backoff_s=0.01,
            ),
            "replicate": ReplicateAdapter(
                api_key="r8_test_token",
                base_url="http://replicate.test",
                transport=httpx.ASGITransport(app=replicate.app),
                poll_backoff_s=0.01,
            ),
        }
    )
    running = Worker(runtime, concurrency=4, registry=registry)
    await running.start()
    try:
        yield running
    finally:
        await running.stop(grace_s=0)
        await registry.aclose()


WAN = {
    "model": "wan-2.7-text-to-video",
    "prompt": "neon-lit Tokyo street",
    "duration": 5,
    "resolution": "720p",
}
SEEDREAM = {"model": "seedream-4", "prompt": "a teapot", "resolution": "1K", "number_results": 2}


async def submit(
    client: httpx.AsyncClient, headers: dict[str, str], body: dict[str, object]
) -> str:
    response = await client.post("/api/v1/generate", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return str(response.json()["generation_id"])


async def provider_of(runtime: Runtime, generation_id: str) -> str | None:
    async with runtime.db.read() as session:
        return (
            await session.execute(select(Generation.provider).where(Generation.id == generation_id))
        ).scalar_one()


async def test_generation_completes_on_the_primary_route_and_outputs_are_copied_to_our_storage(
    runtime: Runtime, client: httpx.AsyncClient, worker: Worker, fal: FakeFal
) -> None:
    acct = await account_with_key(runtime, credits=1000)
    generation_id = await submit(client, acct.headers, SEEDREAM)
    body = await wait_for_status(client, generation_id, acct.headers)
    assert body["status"] == "completed", body
    assert await provider_of(runtime, generation_id) == "fal"
    assert fal.submissions == 1
    assert len(body["output_urls"]) == 2
    for url, output in zip(body["output_urls"], body["outputs"], strict=True):
        assert url.startswith("http://testserver/files/"), "upstream URLs never reach the client"
        response = await client.get(url)
        assert response.status_code == 200
        assert response.content in {data for data, _ in fal.files.values()}
        assert (output["width"], output["height"]) == FakeFal.image_size
    # 2 results of 1K at 30 credits each; the outputs are tiny, so charged as 1K (the floor).
    assert body["credits_used"] == 60
    await assert_ledger_consistent(runtime)


async def test_with_the_primary_returning_5xx_the_generation_completes_on_the_mirror(
    runtime: Runtime,
    client: httpx.AsyncClient,
    worker: Worker,
    fal: FakeFal,
    replicate: FakeReplicate,
) -> None:
    fal.inject("submit", 500, times=100)
    acct = await account_with_key(runtime, credits=5000)
    generation_id = await submit(client, acct.headers, WAN)
    body = await wait_for_status(client, generation_id, acct.headers)
    assert body["status"] == "completed", body
    assert await provider_of(runtime, generation_id) == "replicate"
    assert fal.submissions == 0
    assert replicate.submissions == 1
    await assert_ledger_consistent(runtime)


async def test_all_routes_down_opens_the_circuits_then_submit_is_503_until_the_cooldown_ends(
    runtime: Runtime,
    client: httpx.AsyncClient,
    worker: Worker,
    fal: FakeFal,
    replicate: FakeReplicate,
) -> None:
    fal.inject("submit", 503, times=1000)
    replicate.inject("create", 503, times=1000)
    acct = await account_with_key(runtime, credits=20000, concurrent_jobs=10)
    failed = [await submit(client, acct.headers, WAN) for _ in range(2)]
    for generation_id in failed:
        body = await wait_for_status(client, generation_id, acct.headers)
        assert body["status"] == "failed"
        assert body["error"] == "PROVIDER_ERROR"
        assert body["credits_used"] == 0
    before = (await client.get("/api/v1/credits", headers=acct.headers)).json()
    response = await client.post("/api/v1/generate", json=WAN, headers=acct.headers)
    assert response.status_code == 503
    assert response.json()["error"] == "PROVIDER_DOWN"
    assert 1 <= int(response.headers["retry-after"]) <= 1
    after = (await client.get("/api/v1/credits", headers=acct.headers)).json()
    assert (after["balance"], after["held"]) == (before["balance"], before["held"]) == (20000, 0)
    listing = (await client.get("/api/v1/generations", headers=acct.headers)).json()
    assert len(listing["data"]) == 2, "the rejected submit left no row"

    fal._faults.clear()  # the upstream recovers
    replicate._faults.clear()
    await asyncio.sleep(1.1)  # cooldown over: the circuit lets a request through again
    generation_id = await submit(client, acct.headers, WAN)
    assert (await wait_for_status(client, generation_id, acct.headers))["status"] == "completed"
    async with runtime.db.read() as session:
        circuits = {c.route: c for c in (await session.execute(select(ProviderCircuit))).scalars()}
    assert circuits["fal:fal-ai/wan/v2.7/text-to-video"].consecutive_failures == 0
    assert circuits["fal:fal-ai/wan/v2.7/text-to-video"].open_until is None
    await assert_ledger_consistent(runtime)


async def test_content_rejection_fails_with_content_rejected_and_refunds(
    runtime: Runtime,
    client: httpx.AsyncClient,
    worker: Worker,
    fal: FakeFal,
    replicate: FakeReplicate,
) -> None:
    fal.failure = "content"
    acct = await account_with_key(runtime, credits=1000)
    generation_id = await submit(client, acct.headers, SEEDREAM)
    body = await wait_for_status(client, generation_id, acct.headers)
    assert body["status"] == "failed"
    assert body["error"] == "CONTENT_REJECTED"
    assert body["message"]
    assert body["credits_used"] == 0
    assert replicate.submissions == 0, "a content rejection is not retried on a mirror"
    credits = (await client.get("/api/v1/credits", headers=acct.headers)).json()
    assert (credits["balance"], credits["held"]) == (1000, 0)
    await assert_ledger_consistent(runtime)


async def test_a_generation_past_its_deadline_times_out_cancels_upstream_and_refunds(
    runtime: Runtime, client: httpx.AsyncClient, worker: Worker, fal: FakeFal
) -> None:
    from vivix.admin import service as admin

    fal.polls_before_done = 10**9
    acct = await account_with_key(runtime, credits=1000)
    await admin.set_models(runtime, acct.name, ["slow-seedream"], allow=True)
    generation_id = await submit(client, acct.headers, {"model": "slow-seedream", "prompt": "wait"})
    body = await wait_for_status(client, generation_id, acct.headers, within_s=15)
    assert body["status"] == "failed"
    assert body["error"] == "TIMEOUT"
    assert body["credits_used"] == 0
    assert fal.cancels == 1
    await assert_ledger_consistent(runtime)
