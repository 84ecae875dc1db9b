"""Settlement happens exactly once; failures and cancels refund the whole hold."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

import httpx
import pytest
from sqlalchemy import select, update

from tests.audit import assert_ledger_consistent
from tests.factories import account_with_key
from tests.worker.conftest import FAST_WORKER
from tests.worker.helpers import wait_for_status
from vivix.generations import service as generations
from vivix.kit.clock import utcnow
from vivix.kit.egress import GuardedFetcher
from vivix.kit.errors import NotCancelable
from vivix.models import Generation, LedgerEntry
from vivix.providers.base import OutputFile, RenderResult
from vivix.providers.local.adapter import LocalAdapter
from vivix.providers.registry import ProviderRegistry
from vivix.renderer import render
from vivix.runtime import Runtime
from vivix.worker import repository
from vivix.worker.runner import Worker, reap_expired_leases
from vivix.worker.service import JobExecutor, LeaseLost

BROKEN_CATALOG = """
[[models]]
slug = "broken-local-image"
name = "Broken"
category = "image"
creator = "test"
description = "An aspect ratio the local renderer does not support: every render fails."
example_request = { model = "broken-local-image", prompt = "x" }
[models.params]
prompt = { type = "string", required = true, max_length = 2000 }
aspect_ratio = { type = "enum", values = ["7:3"], default = "7:3" }
[[models.pricing]]
credits = 10
[[models.routes]]
provider = "local"
upstream_model = "image"
"""


@pytest.fixture
def settings_overrides(tmp_path: Path) -> dict[str, object]:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(BROKEN_CATALOG)
    return {"worker": FAST_WORKER, "catalog_path": catalog}


async def submit(
    client: httpx.AsyncClient, headers: dict[str, str], body: dict[str, object]
) -> str:
    response = await client.post("/api/v1/generate", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return str(response.json()["generation_id"])


async def claim(runtime: Runtime, owner: str) -> Generation:
    async with runtime.db.transaction() as session:
        generation = await repository.claim_next_generation(
            session, owner, utcnow(), timedelta(seconds=30)
        )
    assert generation is not None
    return generation


async def expire_leases(runtime: Runtime) -> None:
    async with runtime.db.transaction() as session:
        await session.execute(
            update(Generation).values(
                lease_expires_at=utcnow() - timedelta(seconds=1), run_after=utcnow()
            )
        )


def files_under(directory: Path) -> list[Path]:
    return [path for path in directory.rglob("*") if path.is_file()]


async def ledger_kinds(runtime: Runtime, generation_id: str) -> list[str]:
    async with runtime.db.read() as session:
        rows = await session.execute(
            select(LedgerEntry.kind).where(LedgerEntry.generation_id == generation_id)
        )
        return sorted(rows.scalars())


async def test_a_renderer_that_always_fails_ends_failed_with_the_hold_released(
    runtime: Runtime, client: httpx.AsyncClient, worker: Worker
) -> None:
    acct = await account_with_key(runtime, credits=100)
    acct_models = ["broken-local-image"]
    from vivix.admin import service as admin

    await admin.set_models(runtime, acct.name, acct_models, allow=True)
    generation_id = await submit(
        client, acct.headers, {"model": "broken-local-image", "prompt": "x"}
    )
    body = await wait_for_status(client, generation_id, acct.headers)
    assert body["status"] == "failed"
    assert body["error"] == "PROVIDER_ERROR"
    # Customers get the stable message; the renderer's own words are for operators.
    assert (
        body["message"] == "The provider refused the input of this generation; nothing was charged."
    )
    shown = await admin.show_generation(runtime, generation_id)
    assert "7:3" in shown["last_error"]
    assert [entry["error"] for entry in shown["attempt_errors"]] == [shown["last_error"]]
    assert body["credits_used"] == 0
    assert body["completed_at"].endswith("Z")
    credits = (await client.get("/api/v1/credits", headers=acct.headers)).json()
    assert (credits["balance"], credits["held"]) == (100, 0)
    assert await ledger_kinds(runtime, generation_id) == ["hold", "release"]
    await assert_ledger_consistent(runtime)


async def test_two_workers_racing_to_settle_the_same_job_settle_it_once(
    runtime: Runtime, client: httpx.AsyncClient, local_registry: ProviderRegistry
) -> None:
    acct = await account_with_key(runtime, credits=100)
    generation_id = await submit(
        client, acct.headers, {"model": "vivix-local-image", "prompt": "race"}
    )
    first = await claim(runtime, "worker-a")
    await expire_leases(runtime)
    assert await reap_expired_leases(runtime) == 1
    await expire_leases(runtime)  # make the retry due at once
    second = await claim(runtime, "worker-b")
    assert second.id == first.id == generation_id
    assert second.attempts == 2
    assert first.started_at is not None
    assert second.started_at == first.started_at  # the first claim's time is kept
    assert second.lease_owner == "worker-b"

    png = render.render_image("race", width=64, height=64, seed=1)
    result = RenderResult([OutputFile(png, "image/png", width=64, height=64)])
    worker_a = JobExecutor(runtime, local_registry, "worker-a", GuardedFetcher())
    worker_b = JobExecutor(runtime, local_registry, "worker-b", GuardedFetcher())
    outcomes = await asyncio.gather(
        worker_a.complete(first, result),
        worker_b.complete(second, result),
        worker_b.complete(second, result),
        return_exceptions=True,
    )
    assert sum(o is None for o in outcomes) == 1, outcomes
    assert all(isinstance(o, LeaseLost) for o in outcomes if o is not None)
    assert await ledger_kinds(runtime, generation_id) == ["capture", "hold", "release"]
    body = (await client.get(f"/api/v1/generations/{generation_id}", headers=acct.headers)).json()
    assert body["status"] == "completed"
    assert body["credits_used"] == 2
    assert (await client.get(body["output_url"])).status_code == 200
    await assert_ledger_consistent(runtime)


async def test_a_cancel_racing_the_workers_settlement_settles_the_job_once(
    runtime: Runtime, client: httpx.AsyncClient, local_registry: ProviderRegistry
) -> None:
    acct = await account_with_key(runtime, credits=100)
    png = render.render_image("photo finish", width=64, height=64, seed=1)
    result = RenderResult([OutputFile(png, "image/png", width=64, height=64)])
    executor = JobExecutor(runtime, local_registry, "worker-a", GuardedFetcher())
    for _ in range(5):  # either side may win; whichever does, the other changes nothing
        generation_id = await submit(
            client, acct.headers, {"model": "vivix-local-image", "prompt": "photo finish"}
        )
        claimed = await claim(runtime, "worker-a")
        completed, canceled = await asyncio.gather(
            executor.complete(claimed, result),
            generations.cancel(runtime, acct.id, generation_id),
            return_exceptions=True,
        )
        body = (
            await client.get(f"/api/v1/generations/{generation_id}", headers=acct.headers)
        ).json()
        if body["status"] == "completed":
            assert completed is None
            assert isinstance(canceled, NotCancelable)
            assert await ledger_kinds(runtime, generation_id) == ["capture", "hold", "release"]
            assert body["credits_used"] == 2
        else:
            assert body["status"] == "canceled"
            assert isinstance(completed, LeaseLost)
            assert not isinstance(canceled, BaseException)
            assert await ledger_kinds(runtime, generation_id) == ["hold", "release"]
            assert body["credits_used"] == 0
            outputs = Path(url2pathname(urlsplit(runtime.settings.resolved_storage_url).path))
            orphans = await asyncio.to_thread(files_under, outputs / generation_id)
            assert orphans == []  # the loser removed the outputs it had stored
    await assert_ledger_consistent(runtime)


async def test_a_job_interrupted_more_than_max_attempts_fails_and_is_refunded(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime, credits=100)
    generation_id = await submit(
        client, acct.headers, {"model": "vivix-local-image", "prompt": "doomed"}
    )
    for attempt in range(1, runtime.settings.worker.max_attempts + 1):
        claimed = await claim(runtime, f"crashing-{attempt}")
        assert claimed.attempts == attempt
        await expire_leases(runtime)
        assert await reap_expired_leases(runtime) == 1
        await expire_leases(runtime)
    body = (await client.get(f"/api/v1/generations/{generation_id}", headers=acct.headers)).json()
    assert body["status"] == "failed"
    assert body["error"] == "INTERNAL_ERROR"
    assert "interrupted" not in body["message"]
    assert body["credits_used"] == 0
    assert await ledger_kinds(runtime, generation_id) == ["hold", "release"]
    from vivix.admin import service as admin

    history = (await admin.show_generation(runtime, generation_id))["attempt_errors"]
    assert [(e["attempt"], e["worker"]) for e in history] == [
        (attempt, "reaper") for attempt in range(1, runtime.settings.worker.max_attempts + 1)
    ]
    assert all(f"crashing-{e['attempt']}" in e["error"] for e in history)
    await assert_ledger_consistent(runtime)


async def test_reaped_job_waits_for_its_backoff_before_it_can_be_claimed_again(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime, credits=100)
    await submit(client, acct.headers, {"model": "vivix-local-image", "prompt": "later"})
    await claim(runtime, "crashing")
    async with runtime.db.transaction() as session:
        await session.execute(
            update(Generation).values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
    # Claims are asked "as of" the moment the reaper started, not whenever this line runs
    # on a loaded machine: the backoff (0.1 s here) starts at the reap.
    reaped_at = utcnow()
    await reap_expired_leases(runtime)
    async with runtime.db.transaction() as session:
        again = await repository.claim_next_generation(
            session, "other", reaped_at, timedelta(seconds=30)
        )
    assert again is None  # run_after is in the future (backoff)
    async with runtime.db.transaction() as session:
        later = await repository.claim_next_generation(
            session, "other", reaped_at + timedelta(minutes=1), timedelta(seconds=30)
        )
    assert later is not None
    assert later.attempts == 2


async def test_cancel_pending_refunds_and_cancel_again_is_not_cancelable(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime, credits=100)
    generation_id = await submit(
        client, acct.headers, {"model": "vivix-local-image", "prompt": "nah", "resolution": "4K"}
    )
    response = await client.post(
        f"/api/v1/generations/{generation_id}/cancel", headers=acct.headers
    )
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "canceled"
    assert body["credits_used"] == 0
    assert body["completed_at"]
    assert response.headers["x-credits-balance"] == "100"
    again = await client.post(f"/api/v1/generations/{generation_id}/cancel", headers=acct.headers)
    assert again.status_code == 409
    assert again.json()["error"] == "NOT_CANCELABLE"
    assert again.json()["status"] == "canceled"
    assert again.json()["request_id"] == again.headers["x-request-id"]
    assert await ledger_kinds(runtime, generation_id) == ["hold", "release"]
    await assert_ledger_consistent(runtime)


async def test_cancel_of_another_accounts_generation_is_not_found(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    owner = await account_with_key(runtime, credits=100)
    stranger = await account_with_key(runtime, credits=100)
    generation_id = await submit(
        client, owner.headers, {"model": "vivix-local-image", "prompt": "mine"}
    )
    response = await client.post(
        f"/api/v1/generations/{generation_id}/cancel", headers=stranger.headers
    )
    assert response.status_code == 404
    assert response.json()["error"] == "GENERATION_NOT_FOUND"
    body = (await client.get(f"/api/v1/generations/{generation_id}", headers=owner.headers)).json()
    assert body["status"] == "pending"


async def test_cancel_processing_stops_the_render_and_refunds(
    runtime: Runtime, client: httpx.AsyncClient, worker: Worker
) -> None:
    acct = await account_with_key(runtime, credits=1000)
    generation_id = await submit(
        client,
        acct.headers,
        {
            "model": "vivix-local-video",
            "prompt": "very long render",
            "resolution": "1080p",
            "duration": 10,
        },
    )
    await wait_for_status(client, generation_id, acct.headers, {"processing"})
    await asyncio.sleep(0.3)
    response = await client.post(
        f"/api/v1/generations/{generation_id}/cancel", headers=acct.headers
    )
    assert response.status_code == 200
    assert response.json()["status"] == "canceled"
    await asyncio.wait(list(worker._running.values()), timeout=10)
    assert not worker._running, "the worker stopped the canceled job"
    local = worker.registry.get("local")
    assert isinstance(local, LocalAdapter)
    assert local.active_renders == 0, "the job ended only once its render process stopped"
    # The render process is free again: a small job completes promptly.
    quick = await submit(client, acct.headers, {"model": "vivix-local-image", "prompt": "quick"})
    assert (await wait_for_status(client, quick, acct.headers))["status"] == "completed"
    final = (await client.get(f"/api/v1/generations/{generation_id}", headers=acct.headers)).json()
    assert final["status"] == "canceled"
    assert final["credits_used"] == 0
    assert await ledger_kinds(runtime, generation_id) == ["hold", "release"]
    await assert_ledger_consistent(runtime)


async def test_cancel_of_a_completed_generation_is_not_cancelable(
    runtime: Runtime, client: httpx.AsyncClient, worker: Worker
) -> None:
    acct = await account_with_key(runtime, credits=100)
    generation_id = await submit(
        client, acct.headers, {"model": "vivix-local-image", "prompt": "done"}
    )
    assert (await wait_for_status(client, generation_id, acct.headers))["status"] == "completed"
    response = await client.post(
        f"/api/v1/generations/{generation_id}/cancel", headers=acct.headers
    )
    assert response.status_code == 409
    assert response.json() | {"request_id": None} == {
        "error": "NOT_CANCELABLE",
        "message": "This generation is already completed.",
        "next": response.json()["next"],
        "request_id": None,
        "status": "completed",
    }


@pytest.mark.parametrize(
    "change",
    [{"factor": "0.1"}, {"rows": [{"credits": 1}]}],
    ids=["factor", "replacement-rows"],
)
async def test_a_price_override_set_mid_render_does_not_change_the_charge(
    runtime: Runtime,
    client: httpx.AsyncClient,
    local_registry: ProviderRegistry,
    change: dict[str, object],
) -> None:
    from vivix.admin import service as admin

    acct = await account_with_key(runtime, credits=100)
    await admin.set_models(runtime, acct.name, ["broken-local-image"], allow=True)
    response = await client.post(
        "/api/v1/generate",
        json={"model": "broken-local-image", "prompt": "priced at submit"},
        headers=acct.headers,
    )
    assert response.json()["credits_estimate"] == 10
    claimed = await claim(runtime, "worker-a")
    # The operator lowers the price while the job renders: it was admitted at 10.
    await admin.set_price_override(runtime, acct.name, "broken-local-image", **change)  # type: ignore[arg-type]
    png = render.render_image("priced", width=64, height=64, seed=1)
    result = RenderResult([OutputFile(png, "image/png", width=64, height=64)])
    await JobExecutor(runtime, local_registry, "worker-a", GuardedFetcher()).complete(
        claimed, result
    )
    body = (await client.get(f"/api/v1/generations/{claimed.id}", headers=acct.headers)).json()
    assert body["status"] == "completed"
    assert body["credits_used"] == 10
    credits = (await client.get("/api/v1/credits", headers=acct.headers)).json()
    assert (credits["balance"], credits["held"]) == (90, 0)
    # A submit after the change is priced with it.
    later = await client.post(
        "/api/v1/generate",
        json={"model": "broken-local-image", "prompt": "priced after"},
        headers=acct.headers,
    )
    assert later.json()["credits_estimate"] == 1
    await assert_ledger_consistent(runtime)
