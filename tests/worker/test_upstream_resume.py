"""No double upstream spend around stored jobs (finding 5 of the fault audit): a retried
attempt resumes its stored upstream job before it fetches reference images again, and
an upstream job nobody will collect — the route failed over to a mirror, or the reaper
gave the generation up — is asked to stop."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from tests.audit import assert_ledger_consistent
from tests.factories import account_with_key
from tests.fakes.fal import FakeFal
from tests.fakes.replicate import FakeReplicate
from tests.worker.conftest import FAST_WORKER
from tests.worker.helpers import wait_for_status
from vivix.kit.clock import utcnow
from vivix.models import Generation
from vivix.providers.base import RenderRequest
from vivix.providers.fal.adapter import FalAdapter
from vivix.providers.registry import ProviderRegistry
from vivix.providers.replicate.adapter import ReplicateAdapter
from vivix.runtime import Runtime
from vivix.settings import ProviderSettings
from vivix.worker.runner import Worker, reap_expired_leases

NEVER = 10**9
SEEDREAM_FAL = "fal-ai/bytedance/seedream/v4/text-to-image"
REFERENCE = "https://images.example.com/teapot.png"


@pytest.fixture
def settings_overrides(tmp_path: Path) -> dict[str, object]:
    return {
        "worker": {
            **FAST_WORKER,
            "lease_seconds": 15.0,
            "heartbeat_seconds": 1.0,
            "route_attempts": 2,
            "route_retry_backoff_seconds": 0.01,
        },
        "providers": {"fal": {"api_key": "fal-test-key"}, "replicate": {"api_key": "r8_key"}},
    }


@pytest.fixture
def fal() -> FakeFal:
    return FakeFal(polls_before_done=0)


@pytest.fixture
def replicate() -> FakeReplicate:
    return FakeReplicate(polls_before_done=0)


@pytest.fixture
async def registry(fal: FakeFal, replicate: FakeReplicate) -> AsyncIterator[ProviderRegistry]:
    adapters = ProviderRegistry(
        {
            "fal": FalAdapter.standalone(
                ProviderSettings(
                    api_key=fal.api_key, base_url="http://fal.test", retry_backoff_seconds=0.01
                ),
                transport=httpx.ASGITransport(app=fal.app),
            ),
            "replicate": ReplicateAdapter.standalone(
                ProviderSettings(
                    api_key=replicate.api_token,
                    base_url="http://replicate.test",
                    retry_backoff_seconds=0.01,
                ),
                transport=httpx.ASGITransport(app=replicate.app),
            ),
        }
    )
    yield adapters
    await adapters.aclose()


async def public_dns(host: str, port: int, /) -> list[str]:
    return ["93.184.215.14"]


async def private_dns(host: str, port: int, /) -> list[str]:
    return ["10.0.0.9"]


async def submit_seedream(
    runtime: Runtime, client: httpx.AsyncClient, **extra: Any
) -> tuple[str, dict[str, str]]:
    acct = await account_with_key(runtime, credits=1000)
    body = {"model": "seedream-4", "prompt": "a teapot", "resolution": "1K", **extra}
    response = await client.post("/api/v1/generate", json=body, headers=acct.headers)
    assert response.status_code == 201, response.text
    return response.json()["generation_id"], acct.headers


async def store_upstream_job(
    runtime: Runtime, generation_id: str, handle: dict[str, Any], **state: Any
) -> None:
    """The state an earlier attempt left: its fal job stored on the generation."""
    async with runtime.db.transaction() as session:
        await session.execute(
            update(Generation)
            .where(Generation.id == generation_id)
            .values(route_index=0, provider="fal", upstream_handle=handle, **state)
        )


async def start_fal_job(
    runtime: Runtime, registry: ProviderRegistry, generation_id: str, **params: Any
) -> dict[str, Any]:
    adapter = registry.get("fal")
    assert adapter is not None
    request = RenderRequest(
        generation_id, "seedream-4", "image", SEEDREAM_FAL, {"prompt": "a teapot", **params}
    )
    return await adapter.submit(request)


async def test_a_retried_attempt_resumes_its_job_before_fetching_reference_images_again(
    runtime: Runtime, client: httpx.AsyncClient, registry: ProviderRegistry, fal: FakeFal
) -> None:
    runtime.resolver = public_dns
    generation_id, headers = await submit_seedream(runtime, client, reference_images=[REFERENCE])
    handle = await start_fal_job(runtime, registry, generation_id, reference_images=[REFERENCE])
    await store_upstream_job(runtime, generation_id, handle)
    # Since then the reference's host resolves privately: fetching it again would fail
    # the generation, though its upstream job (already paid for) is done.
    runtime.resolver = private_dns
    worker = Worker(runtime, concurrency=1, registry=registry)
    await worker.start()
    try:
        body = await wait_for_status(client, generation_id, headers)
    finally:
        await worker.stop(grace_s=0)
    assert body["status"] == "completed", body
    assert fal.submissions == 1
    await assert_ledger_consistent(runtime)


async def test_failing_over_to_a_mirror_cancels_the_abandoned_upstream_job(
    runtime: Runtime,
    client: httpx.AsyncClient,
    registry: ProviderRegistry,
    fal: FakeFal,
    replicate: FakeReplicate,
) -> None:
    fal.polls_before_done = NEVER
    fal.inject("status", 500, times=1000)  # the status checks keep failing: give the route up
    worker = Worker(runtime, concurrency=1, registry=registry)
    await worker.start()
    try:
        generation_id, headers = await submit_seedream(runtime, client)
        body = await wait_for_status(client, generation_id, headers)
    finally:
        await worker.stop(grace_s=0)
    assert body["status"] == "completed", body
    assert (fal.submissions, replicate.submissions) == (1, 1)
    assert fal.cancels == 1, "the fal job was asked to stop when the route failed over"
    assert next(iter(fal.jobs.values())).canceled
    await assert_ledger_consistent(runtime)


async def test_a_generation_the_reaper_gives_up_has_its_upstream_job_canceled(
    runtime: Runtime, client: httpx.AsyncClient, registry: ProviderRegistry, fal: FakeFal
) -> None:
    fal.polls_before_done = NEVER
    generation_id, headers = await submit_seedream(runtime, client)
    handle = await start_fal_job(runtime, registry, generation_id, resolution="1K")
    await store_upstream_job(
        runtime,
        generation_id,
        handle,
        status="processing",
        attempts=runtime.settings.worker.max_attempts,
        lease_owner="a-worker-that-died",
        lease_expires_at=utcnow() - timedelta(seconds=1),
    )
    worker = Worker(runtime, concurrency=1, registry=registry)  # its reaper's cancel hook
    try:
        assert await reap_expired_leases(runtime, worker.cancel_abandoned) == 1
    finally:
        await worker.stop(grace_s=0)
    body = (await client.get(f"/api/v1/generations/{generation_id}", headers=headers)).json()
    assert body["status"] == "failed"
    assert body["credits_used"] == 0
    assert fal.cancels == 1
    await assert_ledger_consistent(runtime)
