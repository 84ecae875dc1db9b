"""The SDK's run() against a real `vivix serve`: it waits through the generation's event
stream (not the polling fallback) and reports the render's progress as it streams; a
stream dropped mid-way is opened again after its last event."""

from __future__ import annotations

from tests.live.conftest import LiveServer
from tests.live.sdk import AsyncRecordingTransport, RecordingTransport, Sent, StreamCut
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


def _run(live_server: LiveServer, transport: RecordingTransport) -> Generation:
    seen: list[Generation] = []
    account = live_server.account()
    with Vivix(account.key, base_url=live_server.base_url, transport=transport) as client:
        generation = client.run(
            "vivix-local-video", "a slow tide", on_progress=seen.append, **VIDEO
        )
    assert generation.status == "completed"
    _check_progress(seen)
    return generation


async def _run_async(live_server: LiveServer, transport: AsyncRecordingTransport) -> Generation:
    seen: list[Generation] = []
    account = live_server.account()
    async with AsyncVivix(
        account.key, base_url=live_server.base_url, transport=transport
    ) as client:
        generation = await client.run(
            "vivix-local-video", "a slow tide", on_progress=seen.append, **VIDEO
        )
    assert generation.status == "completed"
    _check_progress(seen)
    return generation


def test_run_receives_progress_events_from_the_stream(live_server: LiveServer) -> None:
    transport = RecordingTransport()
    generation = _run(live_server, transport)
    streams, polls = _streamed(transport.sent, generation.generation_id)
    assert streams == [200]  # one stream, opened once, no reconnect
    assert polls == []  # and never the polling fallback


async def test_async_run_receives_progress_events_from_the_stream(
    live_server: LiveServer,
) -> None:
    transport = AsyncRecordingTransport()
    generation = await _run_async(live_server, transport)
    streams, polls = _streamed(transport.sent, generation.generation_id)
    assert streams == [200]
    assert polls == []


def _resumed(sent: list[Sent], generation_id: str, cut: StreamCut) -> None:
    streams = [s for s in sent if s.path == f"/api/v1/generations/{generation_id}/events"]
    assert [s.status for s in streams] == [200, 200]  # dropped once, opened again
    assert streams[0].last_event_id is None
    assert cut.last_id_through is not None
    assert streams[1].last_event_id == cut.last_id_through  # after the last event seen
    assert _streamed(sent, generation_id)[1] == []  # never polled


def test_a_dropped_stream_resumes_after_its_last_event(live_server: LiveServer) -> None:
    cut = StreamCut(after=3)
    transport = RecordingTransport(cut=cut)
    generation = _run(live_server, transport)
    _resumed(transport.sent, generation.generation_id, cut)


async def test_async_a_dropped_stream_resumes_after_its_last_event(
    live_server: LiveServer,
) -> None:
    cut = StreamCut(after=3)
    transport = AsyncRecordingTransport(cut=cut)
    generation = await _run_async(live_server, transport)
    _resumed(transport.sent, generation.generation_id, cut)
