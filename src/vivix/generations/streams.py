"""Event streams (API.md §5.2): a generation's changes, or every generation's of the
caller's account, as server-sent events.

Each change is a `generation_events` row (`events.feed`), appended in the transaction
that made it; its id is the SSE `id`. A stream subscribes to this process's hub
(`events.hub`) before it reads where it starts, then shows every row after that, each as
GET /generations/{id} shows the generation with that row's status and progress. Resuming
(`Last-Event-ID`) reads the rows after the id from the table, so nothing is missed and a
final state already seen is not sent again. While its generation is pending, a
generation's stream also shows queue position changes (with the id of the change that
moved the queue). The stream holds no database connection while it waits."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter
from sqlalchemy import Row
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.responses import Response

from vivix.accounts.gate import authorize
from vivix.events import repository as feed_repository
from vivix.events.feed import FINAL_STATUSES, GENERATION
from vivix.events.hub import Subscription
from vivix.generations import repository
from vivix.generations.endpoints import shown_with_eta
from vivix.kit.errors import GenerationNotFound, InvalidParams
from vivix.kit.http import PlainRoute, runtime_of
from vivix.kit.ids import is_uuid
from vivix.kit.logging import bind_account, bind_generation
from vivix.kit.metrics import sse_stream
from vivix.models import GenerationStatus
from vivix.users.service import SESSION_COOKIE, resolve_viewer

if TYPE_CHECKING:
    from vivix.runtime import Runtime

router = APIRouter(prefix="/api/v1", tags=["events"], route_class=PlainRoute)

PENDING = GenerationStatus.PENDING.value
CATCH_UP_BATCH = 500
ACCOUNT_START_LIMIT = 100  # active generations shown when an account stream opens
# A pending generation's stream reads its queue position at most this often (every
# claim anywhere moves it).
QUEUE_REFRESH_S = 1.0
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@router.get("/generations/{generation_id}/events", summary="Stream a generation's changes")
async def generation_events(request: Request, generation_id: str) -> Response:
    runtime = runtime_of(request)
    account_id = await _caller(request)
    wanted = generation_id.lower() if is_uuid(generation_id) else None
    if wanted is None:
        raise GenerationNotFound()
    bind_generation(wanted)
    found = await _read(runtime, account_id, wanted, shared=False)
    if found is None:
        raise GenerationNotFound()
    resume_after = _last_event_id(request)
    if (
        resume_after is not None
        and found.status in FINAL_STATUSES
        and found.last_event_id <= resume_after
    ):
        # The final state was seen: 204 tells an EventSource to stop reconnecting.
        return Response(status_code=204, headers=STREAM_HEADERS)
    stream = _generation_stream(runtime, account_id, wanted, resume_after)
    return _response(runtime, stream)


@router.get("/events", summary="Stream the changes of every generation of the account")
async def account_events(request: Request) -> Response:
    runtime = runtime_of(request)
    account_id = await _caller(request)
    query = request.query_params
    status = query.get("status")
    if status is not None and status not in {s.value for s in GenerationStatus}:
        raise InvalidParams(
            "status", "must be one of " + ", ".join(s.value for s in GenerationStatus)
        )
    model = query.get("model")
    if model is not None and ("\x00" in model or len(model) > 100):
        raise InvalidParams("model", "must be a model slug")
    stream = _account_stream(runtime, account_id, _last_event_id(request), model, status)
    return _response(runtime, stream)


async def _caller(request: Request) -> str:
    """The account: the API key's (the usual gate: one rate-limit call for the stream),
    or, without an Authorization header, the Studio session's."""
    runtime = runtime_of(request)
    token = request.cookies.get(SESSION_COOKIE)
    if request.headers.get("authorization") is None and token:
        viewer = await resolve_viewer(runtime, token)
        if viewer is not None:
            bind_account(viewer.account.id)
            return viewer.account.id
    async with runtime.db.autocommit() as connection:
        caller = await authorize(request, connection)
    return caller.account.id


def _last_event_id(request: Request) -> int | None:
    raw = request.headers.get("last-event-id", "").strip()
    return int(raw) if raw.isdigit() and len(raw) <= 18 else None


def _response(runtime: Runtime, stream: AsyncIterator[ServerSentEvent]) -> Response:
    return EventSourceResponse(
        stream,
        headers=STREAM_HEADERS,
        ping=runtime.settings.events.ping_seconds,
        ping_message_factory=lambda: ServerSentEvent(comment="ping"),
    )


def _event(event_id: int, name: str, data: dict[str, object]) -> ServerSentEvent:
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return ServerSentEvent(data=text, event=name, id=str(event_id))


async def _as_of(runtime: Runtime, current: Row[Any], change: Row[Any]) -> dict[str, object]:
    """The generation as shown at `change`: a final state is the row as it is now (it
    no longer changes), an earlier one the row with that change's status and progress."""
    if change.status in FINAL_STATUSES:
        return await shown_with_eta(runtime, current)
    values = dict(current._mapping)
    values["status"] = change.status
    values["progress"] = change.progress
    if change.status != PENDING or current.status != PENDING:
        values["queue_position"] = None
    return await shown_with_eta(runtime, SimpleNamespace(**values))


async def _generation_stream(
    runtime: Runtime, account_id: str, generation_id: str, resume_after: int | None
) -> AsyncIterator[ServerSentEvent]:
    hub = runtime.events
    subscription = Subscription(account_id, generation_id)
    await hub.subscribe(subscription)
    try:
        with sse_stream():
            current = await _read(runtime, account_id, generation_id, shared=False)
            if current is None:
                return
            # Before anything is sent: a queue move from now on is not missed.
            hub.watch_queue(subscription, current.status == PENDING)
            if resume_after is None:
                cursor = int(current.last_event_id)
                yield _event(cursor, GENERATION, await shown_with_eta(runtime, current))
                if current.status in FINAL_STATUSES:
                    return
                catch_up = False
            else:
                cursor = resume_after
                if current.status in FINAL_STATUSES and current.last_event_id <= cursor:
                    return  # the final state was seen
                catch_up = current.last_event_id > cursor
            position = current.queue_position
            refreshed = time.monotonic()
            while True:
                rows, overflowed = subscription.take()
                if catch_up or overflowed:
                    rows = await _read_feed(runtime, cursor, generation_id=generation_id)
                    catch_up = False
                rows = [row for row in rows if row.id > cursor]
                wait: float | None = None
                if rows:
                    for row in rows:
                        built = await _built(runtime, account_id, row)
                        if built is None:
                            return
                        cursor, (current, event) = row.id, built
                        yield event
                        if row.status in FINAL_STATUSES:
                            return
                    position, refreshed = current.queue_position, time.monotonic()
                elif subscription.queue_moved > cursor and current.status == PENDING:
                    wait = refreshed + QUEUE_REFRESH_S - time.monotonic()
                    if wait <= 0:
                        wait, moved = None, subscription.queue_moved
                        current = await _read(runtime, account_id, generation_id)
                        if current is None:
                            return
                        refreshed = time.monotonic()
                        if current.status == PENDING and current.queue_position != position:
                            cursor, position = max(cursor, moved), current.queue_position
                            yield _event(cursor, GENERATION, await shown_with_eta(runtime, current))
                hub.watch_queue(subscription, current.status == PENDING)
                if not subscription.rows and not subscription.overflowed:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(subscription.wake.wait(), wait)
    finally:
        hub.unsubscribe(subscription)


async def _read(
    runtime: Runtime,
    account_id: str,
    generation_id: str,
    at_least: int = 0,
    *,
    shared: bool = True,
) -> Row[Any] | None:
    """The generation with its newest event id, as of event `at_least` or later. Streams
    reading it at the same moment share one query; a shared read begun before that event
    committed is not good enough, and is made again. A stream's starting state is never
    shared (it must be read after the stream subscribed)."""

    async def read() -> Row[Any] | None:
        async with runtime.db.autocommit() as connection:
            return await repository.read_with_last_event(connection, account_id, generation_id)

    if not shared:
        return await read()
    row = await runtime.events.shared((account_id, generation_id), read)
    if row is not None and row.last_event_id < at_least:
        row = await read()
    return row


async def _account_stream(
    runtime: Runtime,
    account_id: str,
    resume_after: int | None,
    model: str | None,
    status: str | None,
) -> AsyncIterator[ServerSentEvent]:
    hub = runtime.events
    subscription = Subscription(account_id)
    await hub.subscribe(subscription)
    try:
        with sse_stream():
            catch_up = resume_after is not None
            if resume_after is None:
                async with runtime.db.autocommit() as connection:
                    cursor = await feed_repository.last_for_account(connection, account_id)
                    active = await repository.active_with_last_event(
                        connection, account_id, model, ACCOUNT_START_LIMIT
                    )
                for current in active:
                    if status is None or current.status == status:
                        yield _event(cursor, GENERATION, await shown_with_eta(runtime, current))
            else:
                cursor = resume_after
            while True:
                rows, overflowed = subscription.take()
                if catch_up or overflowed:
                    rows = await _read_feed(runtime, cursor, account_id=account_id)
                    catch_up = False
                rows = [row for row in rows if row.id > cursor]
                if rows:
                    cursor = rows[-1].id
                    async for event in _account_events(runtime, account_id, rows, model, status):
                        yield event
                if not subscription.rows and not subscription.overflowed:
                    await subscription.wake.wait()
    finally:
        hub.unsubscribe(subscription)


async def _account_events(
    runtime: Runtime,
    account_id: str,
    rows: list[Row[Any]],
    model: str | None,
    status: str | None,
) -> AsyncIterator[ServerSentEvent]:
    for row in rows:
        if status is not None and row.status != status:
            continue
        built = await _built(runtime, account_id, row)
        if built is None:
            continue
        current, event = built
        if model is None or current.model == model:
            yield event


async def _built(
    runtime: Runtime, account_id: str, change: Row[Any]
) -> tuple[Row[Any], ServerSentEvent] | None:
    """`change` as an event, with the generation read for it (None: it is gone). Built
    once for every stream that shows the change at the same moment (an account's streams
    all do): one read, one rendering."""

    async def build() -> tuple[Row[Any], ServerSentEvent] | None:
        current = await _read(runtime, account_id, change.generation_id, change.id)
        if current is None:
            return None
        return current, _event(change.id, change.kind, await _as_of(runtime, current, change))

    return await runtime.events.shared(("event", account_id, change.id), build)


async def _read_feed(
    runtime: Runtime,
    cursor: int,
    *,
    generation_id: str | None = None,
    account_id: str | None = None,
) -> list[Row[Any]]:
    """The rows after `cursor` from the table (resuming, or after the hub dropped a slow
    stream's buffer), up to where the hub has handed rows out: later ones still come from
    it, in order (on PostgreSQL a lower id may yet commit past the hub's position)."""
    rows: list[Row[Any]] = []
    upto = runtime.events.position
    while True:
        async with runtime.db.autocommit() as connection:
            if generation_id is not None:
                batch = await feed_repository.for_generation_after(
                    connection, generation_id, cursor, CATCH_UP_BATCH
                )
            else:
                assert account_id is not None
                batch = await feed_repository.for_account_after(
                    connection, account_id, cursor, CATCH_UP_BATCH
                )
        rows.extend(row for row in batch if upto is None or row.id <= upto)
        if len(batch) < CATCH_UP_BATCH or (upto is not None and batch[-1].id > upto):
            return rows
        cursor = batch[-1].id
