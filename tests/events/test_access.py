"""Who may open a stream, what it costs, and the account-wide stream."""

from __future__ import annotations

import contextlib

import pytest
from sqlalchemy import event

from tests.events.conftest import Served
from tests.factories import account_with_key
from vivix.admin import service as admin
from vivix.users import service as users


async def _error(served: Served, path: str, headers: dict[str, str]) -> tuple[int, str]:
    async with served.http() as http:
        response = await http.get(path, headers=headers)
    assert response.headers["content-type"].startswith("application/json")
    return response.status_code, response.json()["error"]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, (401, "UNAUTHORIZED")),
        ({"Authorization": "Basic abc"}, (401, "UNAUTHORIZED")),
        ({"Authorization": "Bearer vvx_live_nosuchkey"}, (401, "KEY_INVALID")),
    ],
)
async def test_streams_need_a_key_or_a_session(
    served: Served, headers: dict[str, str], expected: tuple[int, str]
) -> None:
    generation_id = await served.submit()
    for path in (f"/api/v1/generations/{generation_id}/events", "/api/v1/events"):
        assert await _error(served, path, headers) == expected
    # A session cookie that isn't one is no way in either.
    async with served.http() as http:
        http.cookies.set("vivix_session", "not-a-session")
        response = await http.get("/api/v1/events")
    assert (response.status_code, response.json()["error"]) == (401, "UNAUTHORIZED")


async def test_unknown_and_foreign_generations_are_not_found(served: Served) -> None:
    other = await account_with_key(served.runtime, credits=1_000)
    await admin.set_models(served.runtime, other.name, ["clip"], allow=True)
    foreign = await served.submit(headers=other.headers)
    for generation_id in (foreign, "0190d6a5-0000-7000-8000-000000000000", "not-a-uuid"):
        path = f"/api/v1/generations/{generation_id}/events"
        assert await _error(served, path, served.headers) == (404, "GENERATION_NOT_FOUND")


async def test_a_bad_filter_is_invalid_params(served: Served) -> None:
    async with served.http() as http:
        response = await http.get("/api/v1/events?status=done", headers=served.headers)
    assert response.status_code == 422
    assert response.json()["field"] == "status"


async def test_opening_a_stream_counts_one_call_whatever_it_sends(served: Served) -> None:
    served.xai.video_polls_before_done = 1
    generation_id = await served.submit()
    async with served.http() as http:
        before = await http.get("/api/v1/credits", headers=served.headers)
    remaining = int(before.headers["x-ratelimit-remaining"])
    path = f"/api/v1/generations/{generation_id}/events"
    # The stream opens before the worker starts, so it sees the run from pending on.
    async with served.stream(path) as stream, served.worker():
        assert int(stream.response.headers["x-ratelimit-remaining"]) == remaining - 1
        events = await stream.rest()
    assert len(events) >= 3
    async with served.http() as http:
        after = await http.get("/api/v1/credits", headers=served.headers)
    assert int(after.headers["x-ratelimit-remaining"]) == remaining - 2


async def test_the_studio_session_cookie_opens_the_accounts_streams(served: Served) -> None:
    runtime = served.runtime
    async with runtime.db.transaction() as session:
        await users.create_user(
            session,
            runtime,
            email="viewer@example.com",
            password="a long enough password",
            account_name=served.account.name,
        )
    token = await users.sign_in(
        runtime, "viewer@example.com", "a long enough password", "127.0.0.1", "test"
    )
    generation_id = await served.submit()
    path = f"/api/v1/generations/{generation_id}/events"
    async with served.stream(path, headers={}, cookies={"vivix_session": token}) as stream:
        assert stream.response.status_code == 200
        first = await stream.next()
    assert first is not None
    assert first.data["generation_id"] == generation_id


async def test_the_account_stream_shows_its_generations_changes_with_filters(
    served: Served,
) -> None:
    served.xai.video_polls_before_done = 1
    waiting = await served.submit()  # pending when the streams open
    other_account = await account_with_key(served.runtime, credits=1_000)
    await admin.set_models(served.runtime, other_account.name, ["clip"], allow=True)
    async with (
        served.stream("/api/v1/events") as everything,
        served.stream("/api/v1/events?model=other") as other_model,
        served.stream("/api/v1/events?status=completed") as completions,
    ):
        opened = await everything.next()
        assert opened is not None
        assert opened.data["generation_id"] == waiting
        assert opened.data["status"] == "pending"
        clip = await served.submit()
        other = await served.submit(model="other")
        await served.submit(headers=other_account.headers)  # not this account's
        async with served.worker():
            done: set[str] = set()
            while done != {waiting, clip, other}:
                event = await completions.next()
                assert event is not None
                assert event.data["status"] == "completed"
                done.add(event.data["generation_id"])
            seen = await other_model.until(lambda event: event.data["status"] == "completed")
            assert seen.data["generation_id"] == other
            await everything.until(
                lambda event: (
                    event.data["generation_id"] == other and event.data["status"] == "completed"
                )
            )

    everything_ids = [int(event.id or 0) for event in everything.events]
    assert everything_ids == sorted(everything_ids)
    mine = {event.data["generation_id"] for event in everything.events}
    assert mine <= {waiting, clip, other}
    assert {event.data["model"] for event in other_model.events} == {"other"}
    assert all(event.data["status"] == "completed" for event in completions.events)


async def test_streams_of_one_account_share_the_read_of_a_change(served: Served) -> None:
    reads: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if "last_event_id" in statement and "FROM generations" in statement:
            reads.append(statement)

    engine = served.runtime.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        await served.submit()  # pending: every stream opens with it
        async with contextlib.AsyncExitStack() as stack:
            streams = [
                await stack.enter_async_context(served.stream("/api/v1/events")) for _ in range(5)
            ]
            for stream in streams:  # each has read where it starts, and sent it
                assert await stream.next() is not None
            before = len(reads)
            generation_id = await served.submit()
            for stream in streams:
                seen = await stream.next()  # the second generation
                assert seen is not None
                assert seen.data["generation_id"] == generation_id
            shared = len(reads) - before
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert shared == 1, f"{shared} reads for one change seen by 5 streams"
