"""Real `vivix worker` processes: a killed worker loses nothing, a stopped one hands back."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from tests.audit import assert_ledger_consistent
from tests.factories import account_with_key
from tests.worker.helpers import wait_for_status
from vivix.kit.runtime import Runtime
from vivix.models import Generation, LedgerEntry

pytestmark = pytest.mark.slow


@pytest.fixture
def settings_overrides(tmp_path: Path) -> dict[str, object]:
    # The same storage directory for the test's API and the worker processes.
    return {"storage_url": (tmp_path / "outputs").as_uri()}


class WorkerProcesses:
    def __init__(self, runtime: Runtime, tmp_path: Path) -> None:
        settings = runtime.settings
        self.env = {
            **os.environ,
            "VIVIX_DATABASE_URL": settings.resolved_database_url,
            "VIVIX_DATA_DIR": str(tmp_path / "worker-data"),
            "VIVIX_STORAGE_URL": settings.resolved_storage_url,
            "VIVIX_PUBLIC_URL": settings.resolved_public_url,
            "VIVIX_SECRET_KEY": "test-secret",
            "VIVIX_WORKER__LEASE_SECONDS": "2",
            "VIVIX_WORKER__HEARTBEAT_SECONDS": "0.5",
            "VIVIX_WORKER__POLL_INTERVAL_SECONDS": "0.2",
            "VIVIX_WORKER__RETRY_BACKOFF_SECONDS": "0.1",
            "VIVIX_WORKER__SHUTDOWN_GRACE_SECONDS": "0.5",
            "VIVIX_WORKER__RENDER_PROCESSES": "1",
        }
        self.env.pop("VIVIX_REDIS_URL", None)
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [sys.executable, "-m", "vivix", "worker", "--concurrency", "1"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # kill -9 of the group takes its render processes too
        )
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.fixture
def workers(runtime: Runtime, tmp_path: Path) -> Iterator[WorkerProcesses]:
    group = WorkerProcesses(runtime, tmp_path)
    try:
        yield group
    finally:
        group.stop_all()


async def generation_row(runtime: Runtime, generation_id: str) -> Generation:
    async with runtime.db.read() as session:
        row = (await session.execute(select(Generation).where(Generation.id == generation_id))).scalar_one()
    return row


async def test_kill_9_mid_render_completes_on_another_worker_and_charges_once(
    runtime: Runtime, client: httpx.AsyncClient, workers: WorkerProcesses
) -> None:
    acct = await account_with_key(runtime, credits=1000)
    response = await client.post(
        "/api/v1/generate",
        json={"model": "vivix-local-video", "prompt": "storm over the sea", "duration": 3, "resolution": "720p"},
        headers=acct.headers,
    )
    generation_id = response.json()["generation_id"]
    first = workers.start()
    await wait_for_status(client, generation_id, acct.headers, {"processing"}, timeout=30)
    os.killpg(first.pid, signal.SIGKILL)  # mid-render, no chance to clean up
    first.wait(timeout=10)
    assert (await generation_row(runtime, generation_id)).status == "processing"

    workers.start()
    body = await wait_for_status(client, generation_id, acct.headers, timeout=60)
    assert body["status"] == "completed", body
    assert body["credits_used"] == response.json()["credits_estimate"]
    row = await generation_row(runtime, generation_id)
    assert row.attempts == 2
    async with runtime.db.read() as session:
        kinds = sorted(
            (await session.execute(select(LedgerEntry.kind).where(LedgerEntry.generation_id == generation_id))).scalars()
        )
    assert kinds == ["capture", "hold", "release"]
    assert (await client.get(body["output_url"])).status_code == 200
    await assert_ledger_consistent(runtime)


async def test_sigterm_hands_the_running_job_back_without_spending_an_attempt(
    runtime: Runtime, client: httpx.AsyncClient, workers: WorkerProcesses
) -> None:
    acct = await account_with_key(runtime, credits=1000)
    response = await client.post(
        "/api/v1/generate",
        json={"model": "vivix-local-video", "prompt": "long road", "duration": 10, "resolution": "1080p"},
        headers=acct.headers,
    )
    generation_id = response.json()["generation_id"]
    worker = workers.start()
    await wait_for_status(client, generation_id, acct.headers, {"processing"}, timeout=30)
    await asyncio.sleep(0.3)
    worker.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(worker.wait, 20) == 0
    row = await generation_row(runtime, generation_id)
    assert row.status == "pending"
    assert row.attempts == 0
    assert row.lease_owner is None
    await assert_ledger_consistent(runtime)
