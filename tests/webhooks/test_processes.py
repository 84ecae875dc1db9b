"""Webhooks across real processes (`vivix serve`, `vivix worker`) on the test's database
(SQLite file, and PostgreSQL in CI): a delivery queued while its receiver is down survives
`kill -9` of the whole service and arrives exactly once after the restart; two worker
processes sending one queue never send the same attempt twice."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from tests.factories import account_with_key
from tests.processes import ServerProcess, free_port
from tests.webhooks.receiver import Receiver, wait_until
from vivix.models import WebhookAttempt, WebhookDelivery
from vivix.runtime import Runtime

pytestmark = pytest.mark.slow

SECRET = "test-secret"  # the conftest runtime's: keys hash alike in every process
IMAGE = {"model": "vivix-local-image", "prompt": "a lighthouse in fog"}


@pytest.fixture
def settings_overrides(tmp_path: Path) -> dict[str, object]:
    return {
        "storage_url": (tmp_path / "outputs").as_uri(),
        "webhooks": {"allow_insecure_targets": True},
    }


class Service:
    """`vivix serve` / `vivix worker` processes on the test runtime's database, each in
    its own process group so kill -9 takes its render processes too."""

    def __init__(self, runtime: Runtime, tmp_path: Path) -> None:
        settings = runtime.settings
        self.tmp_path = tmp_path
        # Short: the render pool's forkserver socket path must fit in 108 bytes.
        self.render_tmp = Path(tempfile.mkdtemp(prefix="vvx-"))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("VIVIX_")}
        self.env.update(
            {
                "VIVIX_DATABASE_URL": settings.resolved_database_url,
                "VIVIX_DATA_DIR": str(tmp_path / "service-data"),
                "VIVIX_STORAGE_URL": settings.resolved_storage_url,
                "VIVIX_SECRET_KEY": SECRET,
                "VIVIX_LOG_LEVEL": "warning",
                "VIVIX_DB__POOL_SIZE": "3",
                "VIVIX_DB__MAX_OVERFLOW": "20",
                "VIVIX_WORKER__POLL_INTERVAL_SECONDS": "0.2",
                "VIVIX_WORKER__RENDER_PROCESSES": "1",
                "VIVIX_WEBHOOKS__ALLOW_INSECURE_TARGETS": "true",
                "VIVIX_WEBHOOKS__TIMEOUT_SECONDS": "2",
                "VIVIX_WEBHOOKS__RETRY_SCHEDULE": ",".join(["0.3"] * 200),
                "TMPDIR": str(self.render_tmp),
            }
        )
        self.processes: list[subprocess.Popen[bytes]] = []

    def _spawn(self, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "vivix", *args],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def serve(self, name: str, *, worker: bool = True) -> ServerProcess:
        port = free_port()
        log = self.tmp_path / f"{name}.log"
        self.env["VIVIX_PUBLIC_URL"] = f"http://127.0.0.1:{port}"
        args = ["serve", "--host", "127.0.0.1", "--port", str(port), "--json"]
        process = self._spawn(args if worker else [*args, "--no-worker"], log)
        server = ServerProcess(name, port, log, process)
        server.wait_ready()
        return server

    def worker(self, name: str) -> subprocess.Popen[bytes]:
        return self._spawn(
            ["worker", "--concurrency", "2", "--json"], self.tmp_path / f"{name}.log"
        )

    def kill_9(self, process: subprocess.Popen[bytes]) -> None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        shutil.rmtree(self.render_tmp, ignore_errors=True)


@pytest.fixture
def service(runtime: Runtime, tmp_path: Path) -> Iterator[Service]:
    running = Service(runtime, tmp_path)
    try:
        yield running
    finally:
        running.stop_all()


async def deliveries(runtime: Runtime) -> list[WebhookDelivery]:
    async with runtime.db.read() as session:
        return list((await session.execute(select(WebhookDelivery))).scalars())


async def attempts(runtime: Runtime) -> list[WebhookAttempt]:
    async with runtime.db.read() as session:
        return list((await session.execute(select(WebhookAttempt))).scalars())


async def test_a_delivery_queued_while_the_receiver_is_down_survives_kill_9_and_arrives_once(
    runtime: Runtime, client: httpx.AsyncClient, service: Service
) -> None:
    acct = await account_with_key(runtime, credits=1000)
    port = free_port()  # nobody listens there yet: the receiver is down
    created = await client.post(
        "/api/v1/webhooks",
        json={"url": f"http://127.0.0.1:{port}/hook"},
        headers=acct.headers,
    )
    assert created.status_code == 201, created.text

    first = service.serve("serve-1")
    async with httpx.AsyncClient(base_url=first.base_url, timeout=30) as http:
        submitted = await http.post("/api/v1/generate", json=IMAGE, headers=acct.headers)
        assert submitted.status_code == 201, submitted.text
    generation_id = submitted.json()["generation_id"]

    async def failed_twice() -> bool:
        found = await deliveries(runtime)
        return len(found) == 1 and found[0].attempts >= 2

    for _ in range(1200):
        if await failed_twice():
            break
        assert first.process.poll() is None, first.output()
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"no failed attempts:\n{first.output()}")
    service.kill_9(first.process)  # the whole service: API, worker, render processes
    [queued] = await deliveries(runtime)
    assert queued.status == "pending"
    assert queued.generation_id == generation_id

    with Receiver(port=port) as receiver:
        second = service.serve("serve-2")
        await wait_until(lambda: len(receiver.hooks()) >= 1, within_s=60, what="the delivery")
        # Several poll intervals and retry delays later, still exactly one arrival.
        await asyncio.sleep(3.0)
        assert second.process.poll() is None, second.output()
        got = receiver.hooks()
    assert len(got) == 1
    assert got[0].headers["x-vivix-delivery-id"] == queued.id
    [done] = await deliveries(runtime)
    assert done.status == "succeeded"
    recorded = await attempts(runtime)
    assert [a.status_code for a in recorded].count(200) == 1
    assert "Traceback" not in second.output()


async def test_two_worker_processes_never_send_the_same_attempt_twice(
    runtime: Runtime, client: httpx.AsyncClient, service: Service, receiver: Receiver
) -> None:
    receiver.failures_per_delivery = 1  # every delivery: a 500, then a 200 on its retry
    queued: list[str] = []
    for _ in range(2):
        acct = await account_with_key(runtime)
        for _ in range(5):
            created = await client.post(
                "/api/v1/webhooks", json={"url": receiver.url}, headers=acct.headers
            )
            webhook_id = created.json()["id"]
            for _ in range(3):
                response = await client.post(
                    f"/api/v1/webhooks/{webhook_id}/test", headers=acct.headers
                )
                queued.append(response.json()["id"])
    workers = [service.worker("worker-1"), service.worker("worker-2")]  # racing from the start

    async def all_settled() -> bool:
        return all(d.status == "succeeded" for d in await deliveries(runtime))

    for _ in range(1200):
        if await all_settled():
            break
        assert all(w.poll() is None for w in workers), "a worker exited"
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("deliveries still pending")

    received = Counter(r.headers["x-vivix-delivery-id"] for r in receiver.hooks())
    assert received == Counter({delivery_id: 2 for delivery_id in queued})
    recorded = await attempts(runtime)
    per_delivery = Counter(a.delivery_id for a in recorded)
    assert per_delivery == received
    assert all(d.attempts == 2 for d in await deliveries(runtime))
    owners = {a.owner for a in recorded}
    assert len(owners) <= 2
