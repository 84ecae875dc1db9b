"""GET /api/v1/generations/{id}/events (API.md §5.2), on SQLite and PostgreSQL, against
the app on a real socket with a worker and an upstream fake that reports progress."""

from __future__ import annotations

from sqlalchemy import select

from tests.events.conftest import Served
from tests.events.sse import Event
from vivix.models import GenerationEvent


def _ids(events: list[Event]) -> list[int]:
    return [int(event.id or 0) for event in events]


async def _feed_ids(served: Served, generation_id: str) -> list[int]:
    async with served.runtime.db.read() as session:
        rows = await session.execute(
            select(GenerationEvent.id)
            .where(GenerationEvent.generation_id == generation_id)
            .order_by(GenerationEvent.id)
        )
    return [row.id for row in rows]


async def test_a_stream_shows_pending_processing_progress_and_completed_then_closes(
    served: Served,
) -> None:
    generation_id = await served.submit()
    async with served.stream(f"/api/v1/generations/{generation_id}/events") as stream:
        assert stream.response.status_code == 200
        assert stream.response.headers["content-type"].startswith("text/event-stream")
        assert stream.response.headers["cache-control"] == "no-cache"
        assert stream.response.headers["x-accel-buffering"] == "no"
        first = await stream.next()
        assert first is not None
        assert first.event == "generation"
        assert first.data["status"] == "pending"
        assert first.data["queue_position"] == 1
        assert first.data["eta_ms"] is None  # as GET shows it: no run of this model yet
        async with served.worker():
            rest = await stream.rest()
            async with served.http() as http:
                read = await http.get(
                    f"/api/v1/generations/{generation_id}", headers=served.headers
                )

    events = [first, *rest]
    statuses = [event.data["status"] for event in events]
    assert statuses[0] == "pending"
    assert statuses[1] == "processing"
    assert statuses[-1] == "completed"
    assert statuses.count("completed") == 1
    progress = [event for event in events if event.event == "progress"]
    assert progress, statuses
    fractions = [event.data["progress"] for event in progress]
    assert fractions == sorted(fractions)
    assert 0 < fractions[0] <= 1
    assert all(event.data["status"] == "processing" for event in progress)
    assert all("eta_ms" in event.data for event in progress)
    # Ids grow, and each is a change-feed row of this generation: none was skipped.
    ids = _ids(events)
    assert ids == sorted(set(ids))
    assert ids == await _feed_ids(served, generation_id)
    # The final event is the generation exactly as GET shows it.
    final = events[-1].data
    shown = read.json()
    assert final == shown
    assert final["output_url"]


async def test_resuming_with_last_event_id_misses_nothing_and_repeats_nothing(
    served: Served,
) -> None:
    served.xai.video_polls_before_done = 4
    generation_id = await served.submit()
    path = f"/api/v1/generations/{generation_id}/events"
    async with served.worker():
        async with served.stream(path) as stream:
            seen = [await stream.until(lambda event: event.event == "progress")]
        # Disconnected after the first progress; the job goes on meanwhile.
        last_id = seen[-1].id
        assert last_id is not None
        async with served.stream(
            path, headers={**served.headers, "Last-Event-ID": last_id}
        ) as again:
            resumed = await again.rest()
        assert resumed, "the resumed stream ends with the final state"
        async with served.http() as http:
            after_final = await http.get(
                path, headers={**served.headers, "Last-Event-ID": resumed[-1].id or ""}
            )
        # The final state is not sent again; 204 tells an EventSource to stop reconnecting.
        assert after_final.status_code == 204
        assert after_final.content == b""

    ids = _ids(resumed)
    assert ids[0] > int(last_id)
    assert ids == sorted(set(ids))
    feed = await _feed_ids(served, generation_id)
    assert ids == [i for i in feed if i > int(last_id)]
    assert [event.data["status"] for event in resumed].count("completed") == 1
    assert resumed[-1].data["status"] == "completed"


async def test_a_finished_generation_streams_its_final_state_once_and_closes(
    served: Served,
) -> None:
    served.xai.video_polls_before_done = 0
    generation_id = await served.submit()
    path = f"/api/v1/generations/{generation_id}/events"
    async with served.worker(), served.stream(path) as stream:
        await stream.until(lambda event: event.data["status"] == "completed")
        assert await stream.rest() == []
    async with served.stream(f"/api/v1/generations/{generation_id}/events") as stream:
        events = await stream.rest()
    assert [event.data["status"] for event in events] == ["completed"]


async def test_pings_keep_an_idle_stream_open(served: Served) -> None:
    generation_id = await served.submit()  # no worker: it stays pending
    async with served.stream(f"/api/v1/generations/{generation_id}/events") as stream:
        await stream.next()
        comments = await stream.pings(2)
    assert comments == ["ping", "ping"]


async def test_queue_position_changes_are_streamed(served: Served) -> None:
    served.xai.video_polls_before_done = None  # never finishes: the one slot stays busy
    await served.submit()
    second = await served.submit()
    async with served.stream(f"/api/v1/generations/{second}/events") as stream:
        opened = await stream.next()
        assert opened is not None
        assert opened.data["queue_position"] == 2
        async with served.worker(concurrency=1):  # claims the first: the second moves up
            moved = await stream.next()
    assert moved is not None
    assert moved.event == "generation"
    assert moved.data["status"] == "pending"
    assert moved.data["queue_position"] == 1
    assert int(moved.id or 0) > int(opened.id or 0)


async def test_a_cancel_ends_the_stream_with_the_canceled_state(served: Served) -> None:
    generation_id = await served.submit()  # no worker: it stays pending until canceled
    async with served.stream(f"/api/v1/generations/{generation_id}/events") as stream:
        opened = await stream.next()
        assert opened is not None
        async with served.http() as http:
            canceled = await http.post(
                f"/api/v1/generations/{generation_id}/cancel", headers=served.headers
            )
        assert canceled.status_code == 200
        rest = await stream.rest()
    assert [event.data["status"] for event in rest] == ["canceled"]
    assert rest[0].data == canceled.json()
    assert int(rest[0].id or 0) > int(opened.id or 0)
