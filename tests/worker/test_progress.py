"""Progress (API.md §5.3): stored only upward, through the worker's lease, and reported by
the local renderer while a video renders (frames done / total)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx

from tests.factories import account_with_key
from tests.worker.helpers import wait_for_status
from vivix.kit.clock import utcnow
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
