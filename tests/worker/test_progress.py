"""Progress (API.md §5.3): stored only upward, through the worker's lease, and reported by
the local renderer while a video renders (frames done / total)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx

from tests.factories import account_with_key
from tests.worker.helpers import wait_for_status
from vivix.kit.clock import utcnow
from vivix.providers.registry import ProviderRegistry
from vivix.runtime import Runtime
from vivix.worker import repository
from vivix.worker.runner import Worker


async def _submit(
    client: httpx.AsyncClient, headers: dict[str, str], body: dict[str, object]
) -> str:
    response = await client.post("/api/v1/generate", json=body, headers=headers)
    assert response.status_code == 201, response.text
    generation_id: str = response.json()["generation_id"]
    return generation_id


async def _record(runtime: Runtime, generation_id: str, owner: str, fraction: float) -> bool:
    async with runtime.db.transaction() as session:
        return await repository.record_progress(session, generation_id, owner, fraction)


async def test_progress_is_stored_only_upward_and_only_by_the_lease_holder(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime, credits=1000)
    generation_id = await _submit(
        client, acct.headers, {"model": "vivix-local-image", "prompt": "a red kite"}
    )
    async with runtime.db.transaction() as session:
        claimed = await repository.claim_next_generation(
            session, "worker-a", utcnow(), timedelta(seconds=60)
        )
    assert claimed is not None
    assert claimed.id == generation_id

    assert await _record(runtime, generation_id, "worker-a", 0.5)
    # A late poll answer with a lower fraction, or the same one again, is ignored.
    assert not await _record(runtime, generation_id, "worker-a", 0.3)
    assert not await _record(runtime, generation_id, "worker-a", 0.5)
    # Someone without the lease changes nothing, even upward.
    assert not await _record(runtime, generation_id, "worker-b", 0.9)
    read = (await client.get(f"/api/v1/generations/{generation_id}", headers=acct.headers)).json()
    assert read["status"] == "processing"
    assert read["progress"] == 0.5

    assert await _record(runtime, generation_id, "worker-a", 0.75)
    assert not await _record(runtime, generation_id, "worker-a", 0.74)
    assert await _record(runtime, generation_id, "worker-a", 7.0)  # clamped to 1
    read = (await client.get(f"/api/v1/generations/{generation_id}", headers=acct.headers)).json()
    assert read["progress"] == 1.0


async def test_a_local_video_reports_frames_done_while_it_renders(
    runtime: Runtime, client: httpx.AsyncClient, worker: Worker
) -> None:
    acct = await account_with_key(runtime, credits=1000)
    generation_id = await _submit(
        client,
        acct.headers,
        {
            "model": "vivix-local-video",
            "prompt": "a slow tide",
            "duration": 5,
            "resolution": "720p",
        },
    )
    await wait_for_status(client, generation_id, acct.headers, {"processing"})
    seen: list[float] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 120
    while loop.time() < deadline:
        response = await client.get(f"/api/v1/generations/{generation_id}", headers=acct.headers)
        body = response.json()
        if body["status"] != "processing":
            break
        if body.get("progress") is not None:
            seen.append(body["progress"])
        await asyncio.sleep(0.2)
    final = await wait_for_status(client, generation_id, acct.headers)
    assert final["status"] == "completed", final
    assert "progress" not in final
    partial = [fraction for fraction in seen if 0 < fraction < 1]
    assert partial, f"no progress between 0 and 1 was seen mid-render: {seen}"
    assert seen == sorted(seen), seen
    assert len(set(partial)) >= 2, f"progress never moved: {seen}"


async def _read(client: httpx.AsyncClient, generation_id: str, headers: dict[str, str]) -> Any:
    response = await client.get(f"/api/v1/generations/{generation_id}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def test_eta_is_null_without_history_and_a_number_after_runs_of_the_same_class(
    runtime: Runtime, client: httpx.AsyncClient, local_registry: ProviderRegistry
) -> None:
    acct = await account_with_key(runtime, credits=1000, test_key=True)
    body = {"model": "vivix-local-image", "prompt": "a lantern", "resolution": "1K"}
    first = await _submit(client, acct.headers, body)
    read = await _read(client, first, acct.headers)
    assert read["status"] == "pending"
    assert read["queue_position"] == 1
    assert read["eta_ms"] is None  # no run of this class yet

    worker = Worker(runtime, concurrency=2, registry=local_registry)
    await worker.start()
    try:
        second = await _submit(client, acct.headers, body)
        for generation_id in (first, second):
            done = await wait_for_status(client, generation_id, acct.headers)
            assert done["status"] == "completed", done
            assert "eta_ms" not in done
    finally:
        await worker.stop(grace_s=0)

    queued = await _submit(client, acct.headers, body)
    other_class = await _submit(client, acct.headers, {**body, "number_results": 3})
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10  # this process re-reads the history a second after a run
    while (read := await _read(client, queued, acct.headers))["eta_ms"] is None:
        assert loop.time() < deadline, read
        await asyncio.sleep(0.2)
    assert read["status"] == "pending"
    assert read["queue_position"] == 1
    pending_eta = read["eta_ms"]
    assert isinstance(pending_eta, int)
    assert pending_eta > 0
    behind = await _read(client, other_class, acct.headers)
    assert behind["queue_position"] == 2
    assert behind["eta_ms"] is None  # three results per run: a class without history

    async with runtime.db.transaction() as session:
        claimed = await repository.claim_next_generation(
            session, "worker-a", utcnow(), timedelta(seconds=60)
        )
    assert claimed is not None
    assert claimed.id == queued
    read = await _read(client, queued, acct.headers)
    assert read["status"] == "processing"
    assert isinstance(read["eta_ms"], int)
    assert 0 <= read["eta_ms"] < pending_eta  # no wait for a slot any more
    # Far along by its own account: the estimate leans on its own pace.
    await asyncio.sleep(0.3)
    assert await _record(runtime, queued, "worker-a", 0.99)
    near_done = await _read(client, queued, acct.headers)
    assert near_done["progress"] == 0.99
    assert near_done["eta_ms"] < 1000, near_done
