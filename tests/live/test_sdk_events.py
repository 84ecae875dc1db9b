"""The SDK's run() against a real `vivix serve`: it waits through the generation's event
stream (not the polling fallback) and reports the render's progress as it streams."""

from __future__ import annotations

from tests.live.conftest import LiveServer
from tests.live.sdk import AsyncRecordingTransport, RecordingTransport, Sent
from vivix_client import AsyncVivix, Generation, Vivix

VIDEO = {"duration": 5, "resolution": "720p"}


def _streamed(sent: list[Sent], generation_id: str) -> tuple[list[int | None], list[str]]:
    streams = [s.status for s in sent if s.path == f"/api/v1/generations/{generation_id}/events"]
    polls = [s.path for s in sent if s.method == "GET" and s.path.endswith(generation_id)]
    return streams, polls


def _check_progress(seen: list[Generation]) -> None:
    assert seen[-1].status == "completed"
    fractions = [g.progress for g in seen if g.status == "processing" and g.progress is not None]
    partial = [f for f in fractions if 0 < f < 1]
    assert partial, f"no progress between 0 and 1 reached the callback: {seen}"
    assert fractions == sorted(fractions)
    order = ["pending", "processing", "completed"]
    assert [order.index(g.status) for g in seen] == sorted(order.index(g.status) for g in seen)


def test_run_receives_progress_events_from_the_stream(live_server: LiveServer) -> None:
    account = live_server.account()
    transport = RecordingTransport()
    seen: list[Generation] = []
    with Vivix(account.key, base_url=live_server.base_url, transport=transport) as client:
        generation = client.run(
            "vivix-local-video", "a slow tide", on_progress=seen.append, **VIDEO
        )
    assert generation.status == "completed"
    _check_progress(seen)
    streams, polls = _streamed(transport.sent, generation.generation_id)
    assert streams == [200]  # one stream, opened once, no reconnect
    assert polls == []  # and never the polling fallback


async def test_async_run_receives_progress_events_from_the_stream(
    live_server: LiveServer,
) -> None:
    account = live_server.account()
    transport = AsyncRecordingTransport()
    seen: list[Generation] = []
    async with AsyncVivix(
        account.key, base_url=live_server.base_url, transport=transport
    ) as client:
        generation = await client.run(
            "vivix-local-video", "a slow tide", on_progress=seen.append, **VIDEO
        )
    assert generation.status == "completed"
    _check_progress(seen)
    streams, polls = _streamed(transport.sent, generation.generation_id)
    assert streams == [200]
    assert polls == []
