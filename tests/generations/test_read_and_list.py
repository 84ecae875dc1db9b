"""Reading one generation and listing an account's history (API.md §3): fields by status,
tenant isolation, cursor pagination and filters."""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from tests.factories import AccountWithKey, account_with_key
from vivix.models import Generation
from vivix.runtime import Runtime

GENERATE = "/api/v1/generate"
LIST = "/api/v1/generations"
IMAGE = {"model": "vivix-local-image", "prompt": "a lighthouse in fog"}
AUDIO = {"model": "vivix-local-audio", "prompt": "rain on a tin roof", "duration": 3}
PENDING_FIELDS = {
    "generation_id",
    "status",
    "model",
    "credits_estimate",
    "elapsed_ms",
    "created_at",
    "queue_position",
    "eta_ms",  # null: no run of this model yet
    "source",
    "params",
    "metadata",
}


@pytest.fixture
async def acct(runtime: Runtime) -> AccountWithKey:
    return await account_with_key(runtime, calls_per_minute=100_000, concurrent_jobs=1000)


async def create(
    client: httpx.AsyncClient, acct: AccountWithKey, body: dict[str, Any] | None = None
) -> str:
    response = await client.post(GENERATE, json=body or IMAGE, headers=acct.headers)
    assert response.status_code == 201, response.text
    generation_id: str = response.json()["generation_id"]
    return generation_id


async def set_columns(runtime: Runtime, generation_id: str, **values: Any) -> None:
    """Test setup: put a row into a state the API can't reach without a worker."""
    async with runtime.db.transaction() as session:
        await session.execute(
            update(Generation).where(Generation.id == generation_id).values(**values)
        )


async def list_ids(
    client: httpx.AsyncClient, acct: AccountWithKey, params: dict[str, str] | list[Any]
) -> list[str]:
    response = await client.get(LIST, params=params, headers=acct.headers)
    assert response.status_code == 200, response.text
    return [g["generation_id"] for g in response.json()["data"]]


def parse_z(text: str) -> datetime:
    assert text.endswith("Z")
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


# -- GET /generations/{id} ---------------------------------------------------------------


async def test_pending_generation_shows_the_documented_fields(
    client: httpx.AsyncClient, acct: AccountWithKey
) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    generation_id = await create(client, acct, {**IMAGE, "metadata": {"order": "A-17"}})
    response = await client.get(f"{LIST}/{generation_id}", headers=acct.headers)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == PENDING_FIELDS
    assert body["eta_ms"] is None
    assert body["generation_id"] == generation_id
    assert body["status"] == "pending"
    assert body["model"] == "vivix-local-image"
    assert body["credits_estimate"] == 2
    assert isinstance(body["elapsed_ms"], int)
    assert body["elapsed_ms"] >= 0
    assert before <= parse_z(body["created_at"]) <= datetime.now(UTC)
    assert body["queue_position"] == 1
    assert body["params"]["prompt"] == "a lighthouse in fog"
    assert body["params"]["resolution"] == "1K"
    assert body["metadata"] == {"order": "A-17"}


async def test_elapsed_ms_grows_while_pending(
    client: httpx.AsyncClient, acct: AccountWithKey
) -> None:
    generation_id = await create(client, acct)
    first = (await client.get(f"{LIST}/{generation_id}", headers=acct.headers)).json()
    await asyncio.sleep(0.05)
    second = (await client.get(f"{LIST}/{generation_id}", headers=acct.headers)).json()
    assert second["elapsed_ms"] >= first["elapsed_ms"] + 40


async def test_queue_position_counts_the_pending_generations_ahead(
    runtime: Runtime, client: httpx.AsyncClient, acct: AccountWithKey
) -> None:
    other = await account_with_key(runtime)
    first = await create(client, acct)
    second = await create(client, other)
    third = await create(client, acct)
    positions = [
        (await client.get(f"{LIST}/{gid}", headers=who.headers)).json()["queue_position"]
        for gid, who in ((first, acct), (second, other), (third, acct))
    ]
    # The queue is shared by all accounts: everyone pending ahead counts.
    assert positions == [1, 2, 3]
    await set_columns(runtime, first, status="processing")
    third_now = (await client.get(f"{LIST}/{third}", headers=acct.headers)).json()
    assert third_now["queue_position"] == 2
    processing = (await client.get(f"{LIST}/{first}", headers=acct.headers)).json()
    assert processing["status"] == "processing"
    assert "queue_position" not in processing
    assert "elapsed_ms" in processing


async def test_finished_generation_shows_completed_at_and_credits_used(
    runtime: Runtime, client: httpx.AsyncClient, acct: AccountWithKey
) -> None:
    generation_id = await create(client, acct, {**IMAGE, "metadata": {"k": "v"}})
    finished = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    await set_columns(
        runtime,
        generation_id,
        status="failed",
        error_code="PROVIDER_ERROR",
        error_message="upstream said no",
        credits_used=0,
        completed_at=finished,
    )
    body = (await client.get(f"{LIST}/{generation_id}", headers=acct.headers)).json()
    assert body["status"] == "failed"
    assert body["error"] == "PROVIDER_ERROR"
    assert body["message"] == "upstream said no"
    assert body["credits_used"] == 0
    assert parse_z(body["completed_at"]) == finished
    assert "elapsed_ms" not in body
    assert "queue_position" not in body
    assert body["params"]["prompt"] == "a lighthouse in fog"
    assert body["metadata"] == {"k": "v"}


# -- tenant isolation --------------------------------------------------------------------


async def test_another_accounts_generation_is_neither_readable_nor_listed(
    runtime: Runtime, client: httpx.AsyncClient, acct: AccountWithKey
) -> None:
    stranger = await account_with_key(runtime)
    mine = await create(client, acct, {**IMAGE, "metadata": {"team": "x"}})
    theirs = await create(client, stranger, {**IMAGE, "metadata": {"team": "x"}})

    foreign = await client.get(f"{LIST}/{theirs}", headers=acct.headers)
    assert foreign.status_code == 404
    assert foreign.json()["error"] == "GENERATION_NOT_FOUND"

    assert await list_ids(client, acct, {}) == [mine]
    assert await list_ids(client, stranger, {}) == [theirs]
    for filters in ({"metadata[team]": "x"}, {"model": "vivix-local-image"}, {"status": "pending"}):
        assert await list_ids(client, acct, filters) == [mine]
    # A cursor pointing at someone else's row does not leak it either.
    cursor = base64.urlsafe_b64encode(theirs.encode()).decode().rstrip("=")
    assert theirs not in await list_ids(client, acct, {"cursor": cursor})


# -- pagination --------------------------------------------------------------------------


async def test_list_is_newest_first_and_walking_all_pages_yields_every_row_once(
    client: httpx.AsyncClient, acct: AccountWithKey
) -> None:
    created = [await create(client, acct) for _ in range(7)]
    for limit in (1, 3, 7, 100):
        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            params = {"limit": str(limit)} | ({"cursor": cursor} if cursor else {})
            response = await client.get(LIST, params=params, headers=acct.headers)
            assert response.status_code == 200
            page = response.json()
            assert set(page) == {"data", "next_cursor", "has_more"}
            assert len(page["data"]) <= limit
            seen += [g["generation_id"] for g in page["data"]]
            pages += 1
            assert page["has_more"] == (page["next_cursor"] is not None)
            if not page["has_more"]:
                break
            assert len(page["data"]) == limit
            cursor = page["next_cursor"]
        assert seen == list(reversed(created)), limit
        assert pages == -(-7 // limit)


async def test_list_defaults_to_20_per_page(
    client: httpx.AsyncClient, acct: AccountWithKey
) -> None:
    created = [await create(client, acct, AUDIO) for _ in range(21)]
    page = (await client.get(LIST, headers=acct.headers)).json()
    assert len(page["data"]) == 20
    assert page["has_more"] is True
    assert [g["generation_id"] for g in page["data"]] == list(reversed(created))[:20]
    rest = (
        await client.get(LIST, params={"cursor": page["next_cursor"]}, headers=acct.headers)
    ).json()
    assert [g["generation_id"] for g in rest["data"]] == [created[0]]
    assert rest["has_more"] is False
    assert rest["next_cursor"] is None


async def test_empty_history_is_an_empty_last_page(
    client: httpx.AsyncClient, acct: AccountWithKey
) -> None:
    page = (await client.get(LIST, headers=acct.headers)).json()
    assert page == {"data": [], "next_cursor": None, "has_more": False}


async def test_listed_items_have_the_same_shape_as_a_read(
    client: httpx.AsyncClient, acct: AccountWithKey
) -> None:
    generation_id = await create(client, acct, {**IMAGE, "metadata": {"a": "b"}})
    listed = (await client.get(LIST, headers=acct.headers)).json()["data"][0]
    read = (await client.get(f"{LIST}/{generation_id}", headers=acct.headers)).json()
    for field in ("generation_id", "status", "model", "credits_estimate", "created_at"):
        assert listed[field] == read[field]
    assert listed["params"] == read["params"]
    assert listed["metadata"] == read["metadata"]


# -- filters -----------------------------------------------------------------------------


async def test_filter_by_status_and_model(
    runtime: Runtime, client: httpx.AsyncClient, acct: AccountWithKey
) -> None:
    image = await create(client, acct)
    audio = await create(client, acct, AUDIO)
    done = await create(client, acct)
    await set_columns(runtime, done, status="completed", completed_at=datetime.now(UTC))

    assert await list_ids(client, acct, {"status": "pending"}) == [audio, image]
    assert await list_ids(client, acct, {"status": "completed"}) == [done]
    assert await list_ids(client, acct, {"status": "failed"}) == []
    assert await list_ids(client, acct, {"model": "vivix-local-audio"}) == [audio]
    assert await list_ids(client, acct, {"model": "vivix-local-image"}) == [done, image]
    assert await list_ids(client, acct, {"model": "vivix-local-image", "status": "pending"}) == [
        image
    ]
    assert await list_ids(client, acct, {"model": "no-such-model"}) == []


async def test_filter_by_creation_time(
    runtime: Runtime, client: httpx.AsyncClient, acct: AccountWithKey
) -> None:
    ids = [await create(client, acct) for _ in range(3)]
    january, february, march = ids
    for generation_id, month in zip(ids, (1, 2, 3), strict=True):
        await set_columns(runtime, generation_id, created_at=datetime(2026, month, 1, tzinfo=UTC))

    assert await list_ids(client, acct, {"created_after": "2026-01-15T00:00:00Z"}) == [
        march,
        february,
    ]
    assert await list_ids(client, acct, {"created_before": "2026-02-15T00:00:00Z"}) == [
        february,
        january,
    ]
    both = {"created_after": "2026-01-15T00:00:00Z", "created_before": "2026-02-15T00:00:00Z"}
    assert await list_ids(client, acct, both) == [february]
    # Offsets are converted to UTC; a date alone means its midnight UTC.
    offset = {"created_after": "2026-02-15T01:00:00+01:00"}
    assert await list_ids(client, acct, offset) == [march]
    assert await list_ids(client, acct, {"created_before": "2026-01-02"}) == [january]
    created = (await client.get(f"{LIST}/{february}", headers=acct.headers)).json()
    assert created["created_at"] == "2026-02-01T00:00:00Z"


async def test_filter_by_metadata(client: httpx.AsyncClient, acct: AccountWithKey) -> None:
    a1 = await create(client, acct, {**IMAGE, "metadata": {"project": "a", "stage": "1"}})
    b1 = await create(client, acct, {**IMAGE, "metadata": {"project": "b", "stage": "1"}})
    a2 = await create(client, acct, {**IMAGE, "metadata": {"project": "a", "stage": "2"}})
    await create(client, acct, IMAGE)

    assert await list_ids(client, acct, {"metadata[project]": "a"}) == [a2, a1]
    assert await list_ids(client, acct, {"metadata[stage]": "1"}) == [b1, a1]
    assert await list_ids(client, acct, {"metadata[project]": "a", "metadata[stage]": "1"}) == [a1]
    assert await list_ids(client, acct, {"metadata[project]": "c"}) == []
    assert await list_ids(client, acct, {"metadata[missing]": "a"}) == []


async def test_metadata_filter_matches_unusual_keys_and_values(
    client: httpx.AsyncClient, acct: AccountWithKey
) -> None:
    metadata = {"user.id": "ü-42", "a b": "x&y=z", "$.k": "[1]", "it's": "'quote'"}
    generation_id = await create(client, acct, {**IMAGE, "metadata": metadata})
    await create(client, acct, {**IMAGE, "metadata": {"user.id": "other"}})
    for key, value in metadata.items():
        assert await list_ids(client, acct, [(f"metadata[{key}]", value)]) == [generation_id], key


async def test_filters_combine_with_pagination(
    client: httpx.AsyncClient, acct: AccountWithKey
) -> None:
    tagged = []
    for index in range(5):
        tagged.append(await create(client, acct, {**IMAGE, "metadata": {"batch": "x"}}))
        await create(client, acct, {**IMAGE, "metadata": {"batch": str(index)}})
    page = (
        await client.get(LIST, params={"metadata[batch]": "x", "limit": "2"}, headers=acct.headers)
    ).json()
    seen = [g["generation_id"] for g in page["data"]]
    while page["has_more"]:
        params = {"metadata[batch]": "x", "limit": "2", "cursor": page["next_cursor"]}
        page = (await client.get(LIST, params=params, headers=acct.headers)).json()
        seen += [g["generation_id"] for g in page["data"]]
    assert seen == list(reversed(tagged))


# -- bad queries -------------------------------------------------------------------------


async def test_bad_query_values_are_422_naming_the_field(
    client: httpx.AsyncClient, acct: AccountWithKey
) -> None:
    await create(client, acct)
    not_a_uuid = base64.urlsafe_b64encode(b"hello").decode()
    for params, field in [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "abc"}, "limit"),
        ({"limit": "1.5"}, "limit"),
        ({"cursor": "zzz"}, "cursor"),
        ({"cursor": "!!!"}, "cursor"),
        ({"cursor": not_a_uuid}, "cursor"),
        ({"cursor": "ü"}, "cursor"),
        ({"status": "done"}, "status"),
        ({"status": "PENDING"}, "status"),
        ({"created_after": "yesterday"}, "created_after"),
        ({"created_after": "2026-13-01T00:00:00Z"}, "created_after"),
        ({"created_before": "2026-05-10T25:00:00Z"}, "created_before"),
        ({"created_before": "1715340000"}, "created_before"),
    ]:
        response = await client.get(LIST, params=params, headers=acct.headers)
        assert response.status_code == 422, (params, response.text)
        body = response.json()
        assert body["error"] == "INVALID_PARAMS"
        assert body["field"] == field, params
        assert body["reason"]
        assert body["request_id"] == response.headers["x-request-id"]


async def test_limits_at_the_edges_are_accepted(
    client: httpx.AsyncClient, acct: AccountWithKey
) -> None:
    await create(client, acct)
    for limit in ("1", "100", ""):
        response = await client.get(LIST, params={"limit": limit}, headers=acct.headers)
        assert response.status_code == 200, limit


# -- awkward filter values: answered, never a 500 ---------------------------------------


async def test_metadata_filter_key_with_a_double_quote_is_answered(
    client: httpx.AsyncClient,
    acct: AccountWithKey,
) -> None:
    generation_id = await create(client, acct, {**IMAGE, "metadata": {'say "hi"': "yes"}})
    assert await list_ids(client, acct, [('metadata[say "hi"]', "yes")]) == [generation_id]


async def test_metadata_filter_key_with_a_backslash_matches(
    client: httpx.AsyncClient,
    acct: AccountWithKey,
) -> None:
    generation_id = await create(client, acct, {**IMAGE, "metadata": {"back\\slash": "v"}})
    assert await list_ids(client, acct, [("metadata[back\\slash]", "v")]) == [generation_id]


async def test_nul_character_in_a_filter_is_a_422_or_no_match(
    client: httpx.AsyncClient,
    acct: AccountWithKey,
) -> None:
    await create(client, acct)
    for params in ({"model": "a\x00b"}, {"metadata[k]": "a\x00b"}):
        response = await client.get(LIST, params=params, headers=acct.headers)
        assert response.status_code in (200, 422), params
        if response.status_code == 200:
            assert response.json()["data"] == []


async def test_nul_character_in_a_metadata_filter_key_is_a_422_or_no_match(
    client: httpx.AsyncClient,
    acct: AccountWithKey,
) -> None:
    await create(client, acct)
    response = await client.get(LIST, params={"metadata[a\x00]": "x"}, headers=acct.headers)
    assert response.status_code in (200, 422)


async def test_timestamp_that_overflows_in_utc_is_a_422(
    client: httpx.AsyncClient,
    acct: AccountWithKey,
) -> None:
    for params in (
        {"created_after": "9999-12-31T23:59:59-01:00"},
        {"created_before": "0001-01-01T00:00:00+01:00"},
    ):
        response = await client.get(LIST, params=params, headers=acct.headers)
        assert response.status_code == 422, params
        assert response.json()["field"] in params
