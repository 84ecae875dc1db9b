"""A job whose code raised (finding 6 of the fault audit): its lease is released at once
with the error recorded, retried after a jittered backoff, and after the last attempt it
fails with a stable message and a refund; every attempt's error is kept for operators.
The reaper handles each expired lease in its own transaction.

The crash is real: the output store can't write the job's files (a file sits where the
generation's directory must go), so storing the rendered output raises."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import delete, update

from tests.audit import assert_ledger_consistent
from tests.factories import account_with_key
from tests.worker.conftest import FAST_WORKER
from tests.worker.helpers import wait_for_status
from vivix.admin import service as admin
from vivix.kit.clock import utcnow
from vivix.models import Generation, LedgerEntry
from vivix.providers.registry import ProviderRegistry
from vivix.runtime import Runtime
from vivix.worker import repository
from vivix.worker.runner import Worker, reap_expired_leases, retry_delay

LEASE_S = 60.0  # far longer than the test: only an immediate release lets it finish
PROMPT = "a portrait of agent 7f3c-confidential-prompt"


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {
        "worker": {
            **FAST_WORKER,
            "lease_seconds": LEASE_S,
            "heartbeat_seconds": 5.0,
            "retry_backoff_seconds": 0.05,
            "max_attempts": 3,
        }
    }


def block_output_directory(runtime: Runtime, generation_id: str) -> Path:
    outputs = runtime.settings.data_dir / "outputs"
    outputs.mkdir(parents=True, exist_ok=True)
    blocker = outputs / generation_id
    blocker.write_text("a file where the generation's output directory must go")
    return blocker


async def submit(client: httpx.AsyncClient, headers: dict[str, str]) -> str:
    response = await client.post(
        "/api/v1/generate", json={"model": "vivix-local-image", "prompt": PROMPT}, headers=headers
    )
    assert response.status_code == 201, response.text
    return str(response.json()["generation_id"])


async def test_a_crashing_job_is_retried_at_once_then_fails_with_every_error_kept(
    runtime: Runtime,
    client: httpx.AsyncClient,
    local_registry: ProviderRegistry,
    capfd: pytest.CaptureFixture[str],
) -> None:
    acct = await account_with_key(runtime, credits=100)
    generation_id = await submit(client, acct.headers)
    block_output_directory(runtime, generation_id)
    worker = Worker(runtime, concurrency=1, registry=local_registry)
    await worker.start()
    try:
        # Three attempts, each ending in a crash: well within one lease.
        body = await wait_for_status(client, generation_id, acct.headers, within_s=LEASE_S / 3)
    finally:
        await worker.stop(grace_s=0)
    assert body["status"] == "failed"
    assert body["error"] == "INTERNAL_ERROR"
    assert body["credits_used"] == 0
    assert "interrupted" not in body["message"]
    assert "refund" in body["message"] or "charged" in body["message"]
    credits = (await client.get("/api/v1/credits", headers=acct.headers)).json()
    assert (credits["balance"], credits["held"]) == (100, 0)

    shown = await admin.show_generation(runtime, generation_id)
    assert shown["attempts"] == 3
    history = shown["attempt_errors"]
    assert [entry["attempt"] for entry in history] == [1, 2, 3]
    for entry in history:
        assert entry["worker"] == worker.owner
        assert entry["at"].endswith("Z")
        assert "Error" in entry["error"]  # the exception's type and text, for operators
    assert shown["last_error"] == history[-1]["error"]
    assert shown["lease_owner"] is None

    # The crash log has the traceback but none of the job's data (the prompt).
    logged = capfd.readouterr()
    output = logged.out + logged.err
    assert "job_crashed" in output
    assert "Traceback" in output
    assert "confidential" not in output
    await assert_ledger_consistent(runtime)


async def test_after_a_crash_the_job_is_pending_again_with_a_backoff(
    runtime: Runtime, client: httpx.AsyncClient, local_registry: ProviderRegistry
) -> None:
    settings = runtime.settings.model_copy(deep=True)
    settings.worker.retry_backoff_seconds = 30.0  # long enough to look at the released job
    slow_retry = dataclasses.replace(runtime, settings=settings)
    acct = await account_with_key(runtime, credits=100)
    generation_id = await submit(client, acct.headers)
    block_output_directory(runtime, generation_id)
    worker = Worker(slow_retry, concurrency=1, registry=local_registry)
    await worker.start()
    try:
        for _ in range(200):
            shown = await admin.show_generation(runtime, generation_id)
            if shown["status"] == "pending" and shown["attempts"] == 1:
                break
            await asyncio.sleep(0.05)
    finally:
        await worker.stop(grace_s=0)
    assert shown["status"] == "pending", shown
    assert shown["lease_owner"] is None
    assert shown["last_error"]
    assert len(shown["attempt_errors"]) == 1
    async with runtime.db.read() as session:
        row = await repository.find_generation(session, generation_id)
    assert row is not None
    delay = (row.run_after - utcnow()).total_seconds()
    assert 10.0 < delay <= 30.0  # jittered: between half and all of the first backoff
    await assert_ledger_consistent(runtime)


def test_retry_delays_grow_and_are_jittered() -> None:
    for attempt in (1, 2, 3, 6):
        ceiling = min(300.0, 2.0 * 2 ** (attempt - 1))
        samples = [retry_delay(attempt, 2.0) for _ in range(200)]
        assert all(ceiling / 2 <= delay <= ceiling for delay in samples)
        assert len(set(samples)) > 150  # not one fixed delay: workers don't retry in step
    assert retry_delay(40, 2.0) <= 300.0
    assert retry_delay(1, 0.0) == 0.0


async def test_one_lease_the_reaper_cannot_settle_does_not_hold_up_the_others(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime, credits=100, concurrent_jobs=10)
    ids = [await submit(client, acct.headers) for _ in range(3)]
    async with runtime.db.transaction() as session:
        for owner in ("a", "b", "c"):
            await repository.claim_next_generation(session, owner, utcnow(), timedelta(seconds=1))
        # All out of attempts and expired: each must be failed and refunded.
        await session.execute(
            update(Generation).values(
                attempts=runtime.settings.worker.max_attempts,
                lease_expires_at=utcnow() - timedelta(seconds=5),
            )
        )
        # The middle one can't be settled: its release entry is already there.
        session.add(
            LedgerEntry(
                account_id=acct.id,
                kind="release",
                amount=0,
                generation_id=ids[1],
                created_at=utcnow(),
            )
        )
    assert await reap_expired_leases(runtime) == 2
    statuses = {i: (await admin.show_generation(runtime, i))["status"] for i in ids}
    assert statuses == {ids[0]: "failed", ids[1]: "processing", ids[2]: "failed"}
    # Once the bad entry is gone, the next round settles it.
    async with runtime.db.transaction() as session:
        await session.execute(
            delete(LedgerEntry).where(
                LedgerEntry.generation_id == ids[1], LedgerEntry.kind == "release"
            )
        )
    assert await reap_expired_leases(runtime) == 1
    assert (await admin.show_generation(runtime, ids[1]))["status"] == "failed"
    await assert_ledger_consistent(runtime)
