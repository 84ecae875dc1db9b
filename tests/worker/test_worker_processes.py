"""Real `vivix worker` processes: a killed worker loses nothing, a stopped one hands back."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from tests.audit import assert_ledger_consistent
from tests.factories import account_with_key
from tests.worker.helpers import wait_for_status
from vivix.models import Generation, LedgerEntry
from vivix.runtime import Runtime

pytestmark = pytest.mark.slow


@pytest.fixture
def settings_overrides(tmp_path: Path) -> dict[str, object]:
    # The same storage directory for the test's API and the worker processes; fal is
    # configured so admission accepts its models (workers get the real URL of a fake).
    return {
        "storage_url": (tmp_path / "outputs").as_uri(),
        "providers": {"fal": {"api_key": "fal-test-key"}},
    }


class WorkerProcesses:
    def __init__(self, runtime: Runtime, tmp_path: Path) -> None:
        settings = runtime.settings
        # Short: the render pool's forkserver puts its socket here (AF_UNIX paths are
        # limited to 108 bytes, which pytest's tmp_path under xdist exceeds).
        self.render_tmp = Path(tempfile.mkdtemp(prefix="vvx-"))
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
            # Renders encode video in a temporary directory: seeing one here means a render
            # is under way.
            "TMPDIR": str(self.render_tmp),
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

    async def wait_for_a_render(self, within_s: float = 60.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        while not any(self.render_tmp.glob("vivix-render-*")):
            assert loop.time() < deadline, "no render started"
            assert all(p.poll() is None for p in self.processes), "a worker exited"
            await asyncio.sleep(0.05)

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        shutil.rmtree(self.render_tmp, ignore_errors=True)


@pytest.fixture
def workers(runtime: Runtime, tmp_path: Path) -> Iterator[WorkerProcesses]:
    group = WorkerProcesses(runtime, tmp_path)
    try:
        yield group
    finally:
        group.stop_all()


async def generation_row(runtime: Runtime, generation_id: str) -> Generation:
    async with runtime.db.read() as session:
        row = (
            await session.execute(select(Generation).where(Generation.id == generation_id))
        ).scalar_one()
    return row


async def test_kill_9_mid_render_completes_on_another_worker_and_charges_once(
    runtime: Runtime, client: httpx.AsyncClient, workers: WorkerProcesses
) -> None:
    acct = await account_with_key(runtime, credits=1000)
    response = await client.post(
        "/api/v1/generate",
        json={
            "model": "vivix-local-video",
            "prompt": "storm over the sea",
            "duration": 3,
            "resolution": "720p",
        },
        headers=acct.headers,
    )
    generation_id = response.json()["generation_id"]
    first = workers.start()
    await wait_for_status(client, generation_id, acct.headers, {"processing"}, within_s=30)
    await workers.wait_for_a_render()
    os.killpg(first.pid, signal.SIGKILL)  # mid-render, no chance to clean up
    first.wait(timeout=10)
    assert (await generation_row(runtime, generation_id)).status == "processing"

    workers.start()
    body = await wait_for_status(client, generation_id, acct.headers, within_s=60)
    assert body["status"] == "completed", body
    assert body["credits_used"] == response.json()["credits_estimate"]
    row = await generation_row(runtime, generation_id)
    assert row.attempts == 2
    async with runtime.db.read() as session:
        kinds = sorted(
            (
                await session.execute(
                    select(LedgerEntry.kind).where(LedgerEntry.generation_id == generation_id)
                )
            ).scalars()
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
        json={
            "model": "vivix-local-video",
            "prompt": "long road",
            "duration": 10,
            "resolution": "1080p",
        },
        headers=acct.headers,
    )
    generation_id = response.json()["generation_id"]
    worker = workers.start()
    await wait_for_status(client, generation_id, acct.headers, {"processing"}, within_s=30)
    await asyncio.sleep(0.3)
    worker.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(worker.wait, 20) == 0
    row = await generation_row(runtime, generation_id)
    assert row.status == "pending"
    assert row.attempts == 0
    assert row.lease_owner is None
    await assert_ledger_consistent(runtime)


async def test_a_killed_worker_resumes_the_same_upstream_job_without_a_second_submit(
    runtime: Runtime, client: httpx.AsyncClient, workers: WorkerProcesses
) -> None:
    from tests.fakes.fal import FakeFal

    fal = FakeFal(outputs=1, polls_before_done=10**9)  # stays IN_PROGRESS until we say so
    async with fal.serve() as fal_url:
        workers.env["VIVIX_PROVIDERS__FAL__API_KEY"] = fal.api_key
        workers.env["VIVIX_PROVIDERS__FAL__BASE_URL"] = fal_url
        acct = await account_with_key(runtime, credits=1000)
        response = await client.post(
            "/api/v1/generate",
            json={"model": "seedream-4", "prompt": "a teapot", "resolution": "1K"},
            headers=acct.headers,
        )
        # Admission needs the provider configured in the API's settings too.
        assert response.status_code in (201, 503), response.text
        if response.status_code == 503:
            pytest.fail("fal must be configured for the API runtime (see settings_overrides)")
        generation_id = response.json()["generation_id"]
        first = workers.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while fal.submissions == 0 or "request_id" not in (
            (await generation_row(runtime, generation_id)).upstream_handle or {}
        ):
            assert loop.time() < deadline, "the first worker never submitted upstream"
            await asyncio.sleep(0.1)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        for job in fal.jobs.values():
            job.polls_before_done = 0  # the upstream job finishes while no worker watches

        workers.start()
        body = await wait_for_status(client, generation_id, acct.headers, within_s=60)
    assert body["status"] == "completed", body
    assert fal.submissions == 1, "the retry resumed the stored upstream job"
    assert (await generation_row(runtime, generation_id)).attempts == 2
    await assert_ledger_consistent(runtime)


async def test_the_service_completes_a_generation_through_a_fake_upstream_end_to_end(
    runtime: Runtime, tmp_path: Path
) -> None:
    """`vivix serve` (API + embedded worker) with fal pointed at a local fake: HTTP client
    → API → worker → fake upstream → our storage → output URL."""
    import socket as socket_module

    from tests.fakes.fal import FakeFal

    with socket_module.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    fal = FakeFal(outputs=2, polls_before_done=2)
    acct = await account_with_key(runtime, credits=1000)
    async with fal.serve() as fal_url:
        env = {
            **os.environ,
            "VIVIX_DATABASE_URL": runtime.settings.resolved_database_url,
            "VIVIX_DATA_DIR": str(tmp_path / "serve-data"),
            "VIVIX_SECRET_KEY": "test-secret",
            "VIVIX_PROVIDERS__FAL__API_KEY": fal.api_key,
            "VIVIX_PROVIDERS__FAL__BASE_URL": fal_url,
            "VIVIX_WORKER__POLL_INTERVAL_SECONDS": "0.2",
        }
        env.pop("VIVIX_REDIS_URL", None)
        server = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "vivix", "serve", "--port", str(port),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        try:
            base = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=base, timeout=10) as http:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 60
                while True:
                    assert server.returncode is None, "vivix serve exited"
                    with contextlib.suppress(httpx.TransportError):
                        if (await http.get("/readyz")).status_code == 200:
                            break
                    assert loop.time() < deadline, "vivix serve never became ready"
                    await asyncio.sleep(0.1)
                response = await http.post(
                    "/api/v1/generate",
                    json={
                        "model": "seedream-4",
                        "prompt": "a ceramic teapot",
                        "resolution": "1K",
                        "number_results": 2,
                    },
                    headers=acct.headers,
                )
                assert response.status_code == 201, response.text
                generation_id = response.json()["generation_id"]
                body = await wait_for_status(http, generation_id, acct.headers)
                assert body["status"] == "completed", body
                urls = body["output_urls"]
                assert isinstance(urls, list)
                assert len(urls) == 2
                served = {data for data, _ in fal.files.values()}
                for url in urls:
                    assert str(url).startswith(base + "/files/")
                    download = await http.get(str(url))  # public, no auth
                    assert download.status_code == 200
                    assert download.headers["content-type"] == "image/png"
                    assert download.content in served
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            await asyncio.wait_for(server.wait(), timeout=20)
    assert fal.submissions == 1
    await assert_ledger_consistent(runtime)
