"""Idempotency-Key on POST /generate (API.md §3 [ext]): a repeat returns the original
generation without a new hold; another body under the same key is a conflict."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import func, select, update

from tests.audit import assert_ledger_consistent, generation_count, ledger_entry_count
from tests.factories import AccountWithKey, account_with_key
from vivix.admin import service as admin
from vivix.catalog.service import Catalog
from vivix.models import Generation, LedgerEntry
from vivix.runtime import Runtime

GENERATE = "/api/v1/generate"
IMAGE = {"model": "vivix-local-image", "prompt": "a lighthouse in fog", "resolution": "2K"}


async def submit(
    client: httpx.AsyncClient, acct: AccountWithKey, body: dict[str, Any], key: str | None
) -> httpx.Response:
    headers = dict(acct.headers)
    if key is not None:
        headers["Idempotency-Key"] = key
    return await client.post(GENERATE, json=body, headers=headers)


async def holds_of(runtime: Runtime, account_id: str) -> int:
    async with runtime.db.read() as session:
        count = (
            await session.execute(
                select(func.count())
                .select_from(LedgerEntry)
                .where(LedgerEntry.account_id == account_id, LedgerEntry.kind == "hold")
            )
        ).scalar_one()
    return int(count)


async def test_repeat_with_the_same_key_and_body_returns_the_original(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime)
    first = await submit(client, acct, IMAGE, "order-42")
    assert first.status_code == 201
    assert "idempotent-replayed" not in first.headers
    original = first.json()
    entries = await ledger_entry_count(runtime)

    again = await submit(client, acct, IMAGE, "order-42")
    assert again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    replay = again.json()
    assert replay["generation_id"] == original["generation_id"]
    assert replay["status"] == "pending"
    assert replay["credits_estimate"] == original["credits_estimate"] == 4
    assert replay["created_at"] == original["created_at"]
    assert again.headers["location"] == f"/api/v1/generations/{original['generation_id']}"
    # No second hold: the wallet is where the first call left it.
    assert again.headers["x-credits-balance"] == first.headers["x-credits-balance"] == "14996"
    assert await ledger_entry_count(runtime) == entries
    assert await generation_count(runtime) == 1
    assert await holds_of(runtime, acct.id) == 1
    await assert_ledger_consistent(runtime)


async def test_same_body_with_keys_in_another_order_is_a_repeat(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime)
    body = {"model": "vivix-local-image", "prompt": "p", "metadata": {"a": "1", "b": "2"}}
    reordered = {"metadata": {"b": "2", "a": "1"}, "prompt": "p", "model": "vivix-local-image"}
    first = await submit(client, acct, body, "k")
    again = await submit(client, acct, reordered, "k")
    assert again.status_code == 200
    assert again.json()["generation_id"] == first.json()["generation_id"]


async def test_same_key_with_another_body_is_a_conflict_and_changes_nothing(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime)
    first = await submit(client, acct, IMAGE, "order-42")
    assert first.status_code == 201
    entries, generations = await ledger_entry_count(runtime), await generation_count(runtime)
    for other in (
        {**IMAGE, "prompt": "another prompt"},
        {**IMAGE, "resolution": "1K"},
        {**IMAGE, "metadata": {"x": "y"}},
        {"model": "vivix-local-audio", "prompt": "a lighthouse in fog"},
    ):
        response = await submit(client, acct, other, "order-42")
        assert response.status_code == 409
        body = response.json()
        assert body["error"] == "IDEMPOTENCY_CONFLICT"
        assert body["request_id"] == response.headers["x-request-id"]
        assert response.headers["x-credits-balance"] == "14996"
    assert await ledger_entry_count(runtime) == entries
    assert await generation_count(runtime) == generations
    # The original is still what the key replays.
    again = await submit(client, acct, IMAGE, "order-42")
    assert again.json()["generation_id"] == first.json()["generation_id"]


async def test_different_accounts_use_the_same_key_independently(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    alice = await account_with_key(runtime)
    bob = await account_with_key(runtime)
    a = await submit(client, alice, IMAGE, "shared-key")
    b = await submit(client, bob, {**IMAGE, "prompt": "bob's own"}, "shared-key")
    assert a.status_code == 201
    assert b.status_code == 201
    assert a.json()["generation_id"] != b.json()["generation_id"]
    assert await holds_of(runtime, alice.id) == 1
    assert await holds_of(runtime, bob.id) == 1
    # Each replays its own.
    again = await submit(client, bob, {**IMAGE, "prompt": "bob's own"}, "shared-key")
    assert again.json()["generation_id"] == b.json()["generation_id"]


async def test_without_a_key_identical_bodies_are_separate_generations(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime)
    first = await submit(client, acct, IMAGE, None)
    second = await submit(client, acct, IMAGE, None)
    assert first.status_code == second.status_code == 201
    assert first.json()["generation_id"] != second.json()["generation_id"]
    assert await holds_of(runtime, acct.id) == 2


async def test_concurrent_duplicates_make_exactly_one_generation_and_one_hold(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime, concurrent_jobs=20)
    responses = await asyncio.gather(*(submit(client, acct, IMAGE, "burst") for _ in range(10)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 9 + [201], [r.text for r in responses]
    assert len({r.json()["generation_id"] for r in responses}) == 1
    assert await generation_count(runtime) == 1
    assert await holds_of(runtime, acct.id) == 1
    credits = (await client.get("/api/v1/credits", headers=acct.headers)).json()
    assert credits["balance"] == 15000 - 4
    assert credits["held"] == 4
    await assert_ledger_consistent(runtime)


async def test_concurrent_duplicates_at_the_concurrency_limit_all_get_the_original(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    # Room for exactly one job: the duplicates must replay it, not be refused for the slot
    # the original itself took.
    acct = await account_with_key(runtime, concurrent_jobs=1)
    responses = await asyncio.gather(*(submit(client, acct, IMAGE, "tight") for _ in range(6)))
    assert sorted(r.status_code for r in responses) == [200] * 5 + [201]
    assert len({r.json()["generation_id"] for r in responses}) == 1


async def test_concurrent_duplicates_with_credits_for_one_all_get_the_original(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime, credits=4)
    responses = await asyncio.gather(*(submit(client, acct, IMAGE, "tight") for _ in range(6)))
    assert sorted(r.status_code for r in responses) == [200] * 5 + [201]
    assert len({r.json()["generation_id"] for r in responses}) == 1


async def test_key_longer_than_255_characters_is_invalid_params(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime)
    response = await submit(client, acct, IMAGE, "k" * 256)
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "INVALID_PARAMS"
    assert body["field"] == "Idempotency-Key"
    assert body["reason"]
    assert await generation_count(runtime) == 0
    assert (await submit(client, acct, IMAGE, "k" * 255)).status_code == 201


async def test_rejected_submit_does_not_use_up_the_key(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime, credits=3)
    refused = await submit(client, acct, IMAGE, "retry-me")
    assert refused.status_code == 402
    await admin.grant_credits(runtime, acct.name, 10)
    accepted = await submit(client, acct, IMAGE, "retry-me")
    assert accepted.status_code == 201
    assert "idempotent-replayed" not in accepted.headers
    invalid = await submit(client, acct, {**IMAGE, "resolution": "9K"}, "other-key")
    assert invalid.status_code == 422
    assert (await submit(client, acct, {**IMAGE, "prompt": "x"}, "other-key")).status_code == 201


async def test_key_older_than_24_hours_starts_a_new_generation(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime)
    first = await submit(client, acct, IMAGE, "daily")
    old_id = first.json()["generation_id"]
    async with runtime.db.transaction() as session:
        await session.execute(
            update(Generation)
            .where(Generation.id == old_id)
            .values(created_at=datetime.now(UTC) - timedelta(hours=24, minutes=1))
        )
    # Past the window even another body is no conflict: the key is free again.
    fresh = await submit(client, acct, {**IMAGE, "prompt": "a new day"}, "daily")
    assert fresh.status_code == 201
    assert fresh.json()["generation_id"] != old_id
    again = await submit(client, acct, {**IMAGE, "prompt": "a new day"}, "daily")
    assert again.status_code == 200
    assert again.json()["generation_id"] == fresh.json()["generation_id"]
    assert await holds_of(runtime, acct.id) == 2
    await assert_ledger_consistent(runtime)


async def test_key_within_24_hours_still_replays(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime)
    first = await submit(client, acct, IMAGE, "almost-a-day")
    async with runtime.db.transaction() as session:
        await session.execute(
            update(Generation)
            .where(Generation.id == first.json()["generation_id"])
            .values(created_at=datetime.now(UTC) - timedelta(hours=23, minutes=59))
        )
    again = await submit(client, acct, IMAGE, "almost-a-day")
    assert again.status_code == 200
    assert again.json()["generation_id"] == first.json()["generation_id"]


async def test_a_replay_shows_the_originals_place_in_the_queue(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime)
    for prompt in ("first", "second"):  # no worker runs here: these stay pending
        assert (await submit(client, acct, {**IMAGE, "prompt": prompt}, None)).status_code == 201
    original = await submit(client, acct, IMAGE, "third-in-line")
    assert original.status_code == 201
    # A job submitted after it does not move it back.
    assert (await submit(client, acct, {**IMAGE, "prompt": "fourth"}, None)).status_code == 201
    again = await submit(client, acct, IMAGE, "third-in-line")
    assert again.status_code == 200
    assert again.json()["generation_id"] == original.json()["generation_id"]
    assert again.json()["status"] == "pending"
    assert again.json()["queue_position"] == 3


async def test_a_key_first_used_with_a_test_key_is_not_replayed_to_a_live_key(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    live = await account_with_key(runtime)
    test_key = (await admin.create_key(runtime, live.name, test=True))["key"]
    test = AccountWithKey(live.id, live.name, test_key)

    free = await submit(client, test, IMAGE, "order-7")
    assert free.status_code == 201
    assert free.json()["credits_estimate"] == 0
    paid = await submit(client, live, IMAGE, "order-7")
    # The live caller gets its own (charged) generation, not the free test render.
    assert paid.status_code == 201, paid.text
    assert "idempotent-replayed" not in paid.headers
    assert paid.json()["generation_id"] != free.json()["generation_id"]
    assert paid.json()["credits_estimate"] == 4
    assert paid.headers["x-credits-balance"] == "14996"
    # Each mode replays its own.
    assert (await submit(client, test, IMAGE, "order-7")).json()["generation_id"] == free.json()[
        "generation_id"
    ]
    assert (await submit(client, live, IMAGE, "order-7")).json()["generation_id"] == paid.json()[
        "generation_id"
    ]
    await assert_ledger_consistent(runtime)


async def test_a_key_first_used_with_a_live_key_is_not_replayed_to_a_test_key(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    live = await account_with_key(runtime)
    test = AccountWithKey(
        live.id, live.name, (await admin.create_key(runtime, live.name, test=True))["key"]
    )
    paid = await submit(client, live, IMAGE, "order-8")
    assert paid.status_code == 201
    free = await submit(client, test, IMAGE, "order-8")
    assert free.status_code == 201, free.text
    assert free.json()["generation_id"] != paid.json()["generation_id"]
    assert free.json()["credits_estimate"] == 0
    # A different body under the same key in the other mode is no conflict either.
    other = await submit(client, test, {**IMAGE, "prompt": "another"}, "order-8b")
    assert other.status_code == 201
    assert (await submit(client, live, {**IMAGE, "prompt": "x"}, "order-8b")).status_code == 201
    assert await holds_of(runtime, live.id) == 2
    await assert_ledger_consistent(runtime)


SEEDREAM_WITH_REFERENCE = {
    "model": "seedream-4",
    "prompt": "a teapot like this one",
    "reference_images": ["https://images.example.com/teapot.png"],
}


async def test_a_replay_does_not_resolve_reference_images_again(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    runtime.settings.providers["fal"] = runtime.settings.provider("fal").model_copy(
        update={"api_key": "fal-key"}
    )
    acct = await account_with_key(runtime)
    lookups: list[str] = []

    async def public_dns(host: str, port: int, /) -> list[str]:
        lookups.append(host)
        return ["93.184.215.14"]

    runtime.resolver = public_dns
    first = await submit(client, acct, SEEDREAM_WITH_REFERENCE, "with-ref")
    assert first.status_code == 201, first.text
    assert lookups == ["images.example.com"]

    async def dns_now_private(host: str, port: int, /) -> list[str]:
        lookups.append(host)
        return ["10.0.0.7"]

    runtime.resolver = dns_now_private  # the answer changed since: the original still stands
    again = await submit(client, acct, SEEDREAM_WITH_REFERENCE, "with-ref")
    assert again.status_code == 200, again.text
    assert again.json()["generation_id"] == first.json()["generation_id"]
    assert lookups == ["images.example.com"]  # no lookup before the original was found


async def test_a_replay_survives_catalog_and_allowlist_changes(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime)
    first = await submit(client, acct, IMAGE, "before-the-change")
    assert first.status_code == 201
    await admin.set_models(runtime, acct.name, ["vivix-local-image"], allow=False)
    again = await submit(client, acct, IMAGE, "before-the-change")
    assert again.status_code == 200, again.text
    assert again.json()["generation_id"] == first.json()["generation_id"]
    # Without the key the same body is refused now: the replay skipped a real check.
    assert (await submit(client, acct, IMAGE, None)).json()["error"] == "MODEL_NOT_ALLOWED"
    runtime.catalog = Catalog([m.spec for m in runtime.catalog.all() if m.slug != IMAGE["model"]])
    gone = await submit(client, acct, IMAGE, "before-the-change")
    assert gone.status_code == 200, gone.text
    assert gone.json()["generation_id"] == first.json()["generation_id"]
