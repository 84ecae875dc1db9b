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
from vivix.kit.clock import utcnow
from vivix.models import Generation, ProviderCircuit
from vivix.providers.fal.adapter import FalAdapter
from vivix.providers.local.adapter import LocalAdapter
from vivix.providers.registry import ProviderRegistry
from vivix.providers.replicate.adapter import ReplicateAdapter
from vivix.runtime import Runtime
from vivix.settings import ProviderSettings
from vivix.worker.runner import Worker

SLOW_MODEL = """
[[models]]
slug = "slow-seedream"
name = "Seedream with a short deadline"
category = "image"
creator = "test"
description = "A fal route and a 3 second deadline."
# Long enough for the claim and the submit on a loaded machine: the deadline must hit
# while the job is being polled, so there is an upstream job to cancel.
deadline_seconds = 3
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
        # A lease a loaded machine can't lose: a reaped job's worker cancels its upstream
        # job (a lost lease asks the upstream to stop), which these tests don't exercise.
        "worker": {
            **FAST_WORKER,
            "lease_seconds": 15.0,
            "heartbeat_seconds": 1.0,
            "route_attempts": 2,
            "route_retry_backoff_seconds": 0.01,
        },
        # Long enough that the 503 below is asked for while the circuits are surely open.
        "circuit": {"failure_threshold": 2, "cooldown_seconds": 4.0},
        "providers": {
            "fal": {"api_key": "fal-test-key"},
            "replicate": {"api_key": "r8_test_token"},
        },
        "catalog_path": catalog,
    }


@pytest.fixture
def fal() -> FakeFal:
    return FakeFal(
        outputs=2,
        polls_before_done=1,
        kinds_by_model={"fal-ai/wan/v2.7/text-to-video": "video"},
    )


@pytest.fixture
def replicate() -> FakeReplicate:
    return FakeReplicate(
        outputs=2, polls_before_done=1, kinds_by_model={"wan-video/wan-2.7-t2v": "video"}
    )


def fake_registry(fal: FakeFal, replicate: FakeReplicate, tmp_path: Path) -> ProviderRegistry:
    return ProviderRegistry(
        {
            "local": LocalAdapter(tmp_path / "scratch", processes=1),
            "fal": FalAdapter.standalone(
                ProviderSettings(
                    api_key="fal-test-key", base_url="http://fal.test", retry_backoff_seconds=0.01
                ),
                transport=httpx.ASGITransport(app=fal.app),
            ),
            "replicate": ReplicateAdapter.standalone(
                ProviderSettings(
                    api_key="r8_test_token",
                    base_url="http://replicate.test",
                    retry_backoff_seconds=0.01,
                ),
                transport=httpx.ASGITransport(app=replicate.app),
            ),
        }
    )


@pytest.fixture
async def worker(
    runtime: Runtime, fal: FakeFal, replicate: FakeReplicate, tmp_path: Path
) -> AsyncIterator[Worker]:
    registry = fake_registry(fal, replicate, tmp_path)
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
    assert response.json()["reason"] == "circuit_open"
    assert 1 <= int(response.headers["retry-after"]) <= 4
    models = (await client.get("/api/v1/models", headers=acct.headers)).json()["models"]
    wan = next(m for m in models if m["slug"] == WAN["model"])
    assert (wan["available"], wan["unavailable_reason"]) == (False, "circuit_open")
    after = (await client.get("/api/v1/credits", headers=acct.headers)).json()
    assert (after["balance"], after["held"]) == (before["balance"], before["held"]) == (20000, 0)
    listing = (await client.get("/api/v1/generations", headers=acct.headers)).json()
    assert len(listing["data"]) == 2, "the rejected submit left no row"

    fal._faults.clear()  # the upstream recovers
    replicate._faults.clear()
    async with runtime.db.read() as session:
        reopen = max(
            (await session.execute(select(ProviderCircuit.open_until))).scalars(),
            key=lambda until: until or utcnow(),
        )
    assert reopen is not None
    await asyncio.sleep(max(0.0, (reopen - utcnow()).total_seconds()) + 0.1)
    # The cooldown is over: the circuits let a request through again.
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


async def test_a_worker_shutting_down_hands_its_upstream_job_to_the_next_worker_uncanceled(
    runtime: Runtime,
    client: httpx.AsyncClient,
    fal: FakeFal,
    replicate: FakeReplicate,
    tmp_path: Path,
) -> None:
    fal.polls_before_done = 10**9
    acct = await account_with_key(runtime, credits=1000)
    generation_id = await submit(client, acct.headers, SEEDREAM)
    registry = fake_registry(fal, replicate, tmp_path)
    first = Worker(runtime, concurrency=1, registry=registry)
    await first.start()
    try:
        async with asyncio.timeout(30):
            while not await upstream_handle_of(runtime, generation_id):
                await asyncio.sleep(0.05)  # the handle is stored right after the submit
                assert fal.submit_attempts <= 1
    finally:
        await first.stop(grace_s=0)  # SIGTERM with no grace left: the job is handed back
    assert fal.cancels == 0, "the upstream job keeps running for the next worker"
    assert (await client.get(f"/api/v1/generations/{generation_id}", headers=acct.headers)).json()[
        "status"
    ] == "pending"
    for job in fal.jobs.values():
        job.polls_before_done = 0  # it finishes upstream while no worker watches

    second = Worker(runtime, concurrency=1, registry=registry)
    await second.start()
    try:
        body = await wait_for_status(client, generation_id, acct.headers)
    finally:
        await second.stop(grace_s=0)
        await registry.aclose()
    assert body["status"] == "completed", body
    assert fal.submissions == 1, "resumed, not paid twice"
    assert replicate.submissions == 0
    await assert_ledger_consistent(runtime)


async def upstream_handle_of(runtime: Runtime, generation_id: str) -> object:
    async with runtime.db.read() as session:
        return (
            await session.execute(
                select(Generation.upstream_handle).where(Generation.id == generation_id)
            )
        ).scalar_one()
