"""Output URLs are built when read from the stored storage keys, so they follow the public
URL the server runs with now, not the one of the day the file was rendered."""

from __future__ import annotations

import httpx
from sqlalchemy import select

from tests.factories import account_with_key
from tests.worker.helpers import wait_for_status
from vivix.app import create_app
from vivix.models import Generation
from vivix.runtime import Runtime, build_runtime, close_runtime
from vivix.worker.runner import Worker


async def test_output_urls_follow_a_changed_public_url(
    runtime: Runtime, client: httpx.AsyncClient, worker: Worker
) -> None:
    acct = await account_with_key(runtime)
    submitted = await client.post(
        "/api/v1/generate",
        json={"model": "vivix-local-image", "prompt": "a harbour", "number_results": 2},
        headers=acct.headers,
    )
    generation_id = submitted.json()["generation_id"]
    before = await wait_for_status(client, generation_id, acct.headers)
    assert before["status"] == "completed"
    assert all(u.startswith("http://testserver/files/") for u in before["output_urls"])
    async with runtime.db.read() as session:
        stored = (
            await session.execute(select(Generation.outputs).where(Generation.id == generation_id))
        ).scalar_one()
    assert stored is not None
    assert all("url" not in o and o["key"].startswith(generation_id) for o in stored)

    # The operator moves the service behind a new host name and restarts it.
    moved = runtime.settings.model_copy(update={"public_url": "https://media.example.org"})
    restarted = await build_runtime(moved)
    try:
        app = create_app(moved, runtime=restarted)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="https://media.example.org"
        ) as new:
            after = (
                await new.get(f"/api/v1/generations/{generation_id}", headers=acct.headers)
            ).json()
            keys = [o["key"] for o in stored]
            assert after["output_urls"] == [f"https://media.example.org/files/{k}" for k in keys]
            assert after["output_url"] == after["output_urls"][0]
            assert [o["url"] for o in after["outputs"]] == after["output_urls"]
            listed = (await new.get("/api/v1/generations", headers=acct.headers)).json()
            assert listed["data"][0]["output_urls"] == after["output_urls"]
            image = await new.get(after["output_url"])
            assert image.status_code == 200
            assert image.content.startswith(b"\x89PNG")
    finally:
        await close_runtime(restarted)
