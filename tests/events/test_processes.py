"""Event streams across real processes on the test's database: a change committed by a
`vivix worker` process reaches a stream served by another `vivix serve` process. On
PostgreSQL the streams' own poll is set to ten minutes, so only LISTEN/NOTIFY can carry
the changes in time; several processes on one SQLite file rely on that poll (0.2 s)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.events.sse import Stream
from tests.factories import account_with_key
from tests.webhooks.test_processes import Service
from vivix.runtime import Runtime

pytestmark = pytest.mark.slow

IMAGE = {"model": "vivix-local-image", "prompt": "a lighthouse in fog"}


@pytest.fixture
def settings_overrides(tmp_path: Path) -> dict[str, object]:
    return {"storage_url": (tmp_path / "outputs").as_uri()}


@pytest.fixture
def service(runtime: Runtime, tmp_path: Path) -> Iterator[Service]:
    running = Service(runtime, tmp_path)
    poll = "0.2" if runtime.db.is_sqlite else "600"
    running.env["VIVIX_EVENTS__POLL_INTERVAL_SECONDS"] = poll
    try:
        yield running
    finally:
        running.stop_all()


async def test_a_worker_process_change_reaches_a_stream_on_another_api_process(
    runtime: Runtime, service: Service
) -> None:
    acct = await account_with_key(runtime, credits=1000)
    # API processes only: the job runs in a third process.
    submitting = service.serve("serve-1", worker=False)
    streaming = service.serve("serve-2", worker=False)
    async with httpx.AsyncClient(base_url=submitting.base_url, timeout=30) as http:
        submitted = await http.post("/api/v1/generate", json=IMAGE, headers=acct.headers)
    assert submitted.status_code == 201, submitted.text
    generation_id = submitted.json()["generation_id"]

    async with (
        httpx.AsyncClient(base_url=streaming.base_url, timeout=30) as http,
        http.stream(
            "GET", f"/api/v1/generations/{generation_id}/events", headers=acct.headers
        ) as response,
    ):
        assert response.status_code == 200
        stream = Stream(response)
        opened = await stream.next()
        assert opened is not None
        assert opened.data["status"] == "pending"
        worker = service.worker("worker")
        events = await stream.rest(within=180)
        assert worker.poll() is None
    statuses = [event.data["status"] for event in events]
    assert statuses[0] == "processing", statuses
    assert statuses[-1] == "completed", statuses
    assert statuses.count("completed") == 1
    ids = [int(event.id or 0) for event in events]
    assert ids == sorted(set(ids))
    for server in (submitting, streaming):
        assert "Traceback" not in server.output()
