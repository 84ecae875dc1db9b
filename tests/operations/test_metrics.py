"""/metrics after a scripted run: a real API process and a real worker process sharing one
PROMETHEUS_MULTIPROC_DIR (the worker's counters show up in the API's scrape), the local
renderer, a Runware fake that rejects one model's content and doesn't serve another's
upstream model, and two webhook endpoints: one that fails each delivery's first attempt,
one nobody listens on. Every family the issue names is there, with the counts the run
implies."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.runware import FakeRunware
from tests.processes import free_port, running_servers, server_env
from tests.webhooks.receiver import Receiver

pytestmark = pytest.mark.slow

TOKEN = "metrics-test-operator-token-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
LOCAL = "vivix-local-image"
REJECTED = "metrics-rejected"  # the fake refuses its content: CONTENT_REJECTED
BROKEN = "metrics-broken"  # routed to a model the fake doesn't serve: PROVIDER_ERROR
SERVED = "runware:100@1"
UNSERVED = "runware:999@1"
CATALOG = "\n".join(
    f"""
[[models]]
slug = "{slug}"
name = "{slug}"
category = "image"
creator = "test"
description = "metrics test"
deadline_seconds = 120
default_tiers = ["pro"]
[models.params]
prompt = {{ type = "string", required = true, max_length = 200 }}
[[models.pricing]]
credits = {credits}
[[models.routes]]
provider = "runware"
upstream_model = "{upstream}"
"""
    for slug, upstream, credits in ((REJECTED, SERVED, 3), (BROKEN, UNSERVED, 5))
)
FAMILIES = [
    "vivix_queue_depth",
    "vivix_queue_wait_seconds",
    "vivix_job_run_seconds",
    "vivix_generations_finished",
    "vivix_provider_requests",
    "vivix_provider_request_seconds",
    "vivix_provider_circuit_open",
    "vivix_provider_consecutive_failures",
    "vivix_webhook_deliveries",
    "vivix_webhook_delivery_lag_seconds",
    "vivix_credits_held",
    "vivix_credits_captured",
    "vivix_credits_released",
    "vivix_admission_batch_size",
    "vivix_sse_streams_open",
    "vivix_http_requests",
]


class Scrape:
    def __init__(self, text: str) -> None:
        self.families = {f.name: f for f in text_string_to_metric_families(text)}

    def value(self, sample_name: str, **labels: str) -> float:
        """The sum of the samples named `sample_name` whose labels include `labels`."""
        total = 0.0
        for family in self.families.values():
            for sample in family.samples:
                if sample.name == sample_name and labels.items() <= sample.labels.items():
                    total += sample.value
        return total


@pytest.fixture
async def runware() -> AsyncIterator[tuple[FakeRunware, str]]:
    fake = FakeRunware("rw-metrics-key")
    fake.failure = "content"
    fake.known_models = {SERVED}
    async with fake.serve() as base_url:
        yield fake, base_url


async def _scrape(http: httpx.AsyncClient) -> Scrape:
    response = await http.get("/metrics")
    assert response.status_code == 200
    return Scrape(response.text)


async def _wait_all_final(
    http: httpx.AsyncClient, key: str, ids: list[str], within_s: float = 150.0
) -> dict[str, dict[str, Any]]:
    deadline = asyncio.get_running_loop().time() + within_s
    headers = {"Authorization": f"Bearer {key}"}
    while True:
        bodies = {}
        for generation_id in ids:
            response = await http.get(f"/api/v1/generations/{generation_id}", headers=headers)
            assert response.status_code == 200, response.text
            bodies[generation_id] = response.json()
        if all(b["status"] in ("completed", "failed", "canceled") for b in bodies.values()):
            return bodies
        assert asyncio.get_running_loop().time() < deadline, bodies
        await asyncio.sleep(0.5)


async def test_metrics_after_a_scripted_run(
    tmp_path: Path, runware: tuple[FakeRunware, str]
) -> None:
    fake, fake_url = runware
    catalog = tmp_path / "catalog.toml"
    catalog.write_text('mode = "extend"\n' + CATALOG)
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    env = server_env(
        DATABASE_URL=f"sqlite:///{tmp_path / 'vivix.db'}",
        DATA_DIR=str(tmp_path / "data"),
        STORAGE_URL=(tmp_path / "outputs").as_uri(),
        SECRET_KEY="metrics-secret",
        ADMIN_TOKEN=TOKEN,
        CATALOG_PATH=str(catalog),
        PROVIDERS__RUNWARE__API_KEY="rw-metrics-key",
        PROVIDERS__RUNWARE__BASE_URL=fake_url,
        PROVIDERS__RUNWARE__RETRIES="0",
        WORKER__POLL_INTERVAL_SECONDS="0.2",
        WORKER__RENDER_PROCESSES="1",
        WORKER__ROUTE_RETRY_BACKOFF_SECONDS="0",
        WEBHOOKS__ALLOW_INSECURE_TARGETS="true",
        WEBHOOKS__RETRY_SCHEDULE="0.2",  # one retry, then the delivery gives up
        WEBHOOKS__TIMEOUT_SECONDS="5",
    )
    env["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc)
    migrate = [sys.executable, "-m", "vivix", "migrate", "--json"]
    await asyncio.to_thread(subprocess.run, migrate, env=env, check=True, timeout=120)
    with running_servers(1, env, tmp_path / "logs", database_has_accounts=True) as (api,):
        async with httpx.AsyncClient(base_url=api.base_url, timeout=30) as http:
            created = await http.post(
                "/admin/v1/accounts", json={"name": "metrics", "credits": 1000}, headers=ADMIN
            )
            assert created.status_code == 201, created.text
            limits = {"concurrent_jobs": 10}
            patched = await http.patch("/admin/v1/accounts/metrics", json=limits, headers=ADMIN)
            assert patched.status_code == 200, patched.text
            key_response = await http.post(
                "/admin/v1/accounts/metrics/keys", json={}, headers=ADMIN
            )
            key = key_response.json()["key"]
            headers = {"Authorization": f"Bearer {key}"}
            receiver = Receiver()
            receiver.failures_per_delivery = 1  # each delivery: a 500, then a 200
            for url in (receiver.url, f"http://127.0.0.1:{free_port()}/nobody"):
                hook = await http.post("/api/v1/webhooks", json={"url": url}, headers=headers)
                assert hook.status_code == 201, hook.text
            submitted: dict[str, str] = {}
            held = 0
            for model, count in ((LOCAL, 3), (REJECTED, 2), (BROKEN, 1)):
                for index in range(count):
                    body = {"model": model, "prompt": f"metrics run {model} {index}"}
                    response = await http.post("/api/v1/generate", json=body, headers=headers)
                    assert response.status_code == 201, response.text
                    submitted[response.json()["generation_id"]] = model
                    held += response.json()["credits_estimate"]
            assert held > 0

            queued = await _scrape(http)  # no worker yet: everything waits
            for model, count in ((LOCAL, 3), (REJECTED, 2), (BROKEN, 1)):
                assert queued.value("vivix_queue_depth", status="pending", model=model) == count
            assert queued.value("vivix_admission_batch_size_count") == 6
            assert queued.value("vivix_admission_batch_size_sum") == 6
            assert queued.value("vivix_credits_held_total") == held

            worker = _start_worker(env, tmp_path)
            try:
                bodies = await _wait_all_final(http, key, list(submitted))
                final = await _wait_for_webhooks(http, 6)
            finally:
                worker.send_signal(signal.SIGTERM)
                worker.wait(30)
                receiver.close()
            assert len(receiver.hooks()) == 12  # 6 refused with a 500, 6 taken

    outcomes = {g: (b["status"], b.get("error")) for g, b in bodies.items()}
    expected = {LOCAL: ("completed", None), REJECTED: ("failed", "CONTENT_REJECTED")}
    expected[BROKEN] = ("failed", "PROVIDER_ERROR")
    assert outcomes == {g: expected[m] for g, m in submitted.items()}
    captured = sum(b["credits_used"] or 0 for b in bodies.values())
    assert captured > 0

    for family in FAMILIES:
        assert family in final.families, family
    for model, count in ((LOCAL, 3), (REJECTED, 2), (BROKEN, 1)):
        for status in ("pending", "processing"):
            assert final.value("vivix_queue_depth", status=status, model=model) == 0
        assert final.value("vivix_queue_wait_seconds_count", model=model) == count
        assert final.value("vivix_job_run_seconds_count", model=model) == count
    finished = "vivix_generations_finished_total"
    assert final.value(finished, model=LOCAL, status="completed", error_code="") == 3
    assert (
        final.value(finished, model=REJECTED, status="failed", error_code="CONTENT_REJECTED") == 2
    )
    assert final.value(finished, model=BROKEN, status="failed", error_code="PROVIDER_ERROR") == 1
    assert final.value(finished) == 6

    calls = "vivix_provider_requests_total"
    assert final.value(calls, provider="local", operation="submit", outcome="ok") == 3
    assert final.value(calls, provider="runware", route=SERVED, operation="submit") == 2
    assert (
        final.value(calls, provider="runware", route=SERVED, operation="poll", outcome="rejected")
        == 2
    )
    assert (
        final.value(calls, provider="runware", route=UNSERVED, operation="submit", outcome="fatal")
        == 1
    )
    assert final.value(calls, outcome="error") == 0
    latency = "vivix_provider_request_seconds_count"
    assert final.value(latency, provider="runware", route=UNSERVED, operation="submit") == 1
    assert final.value(latency, provider="local", operation="submit") == 3
    assert (
        final.value("vivix_provider_consecutive_failures", provider="runware", route=UNSERVED) == 1
    )
    assert final.value("vivix_provider_circuit_open", provider="runware", route=UNSERVED) == 0
    assert fake.submissions == 2  # the content was refused upstream, twice

    assert final.value("vivix_credits_held_total") == held
    assert final.value("vivix_credits_released_total") == held  # every hold released…
    assert final.value("vivix_credits_captured_total") == captured  # …and the charges captured
    assert final.value("vivix_admission_batch_size_count") == 6
    deliveries = "vivix_webhook_deliveries_total"
    assert final.value(deliveries, outcome="delivered") == 6
    assert final.value(deliveries, outcome="failed") == 12  # first attempts, both endpoints
    assert final.value(deliveries, outcome="gave_up") == 6  # the retry nobody answered
    assert final.value("vivix_webhook_delivery_lag_seconds_count") == 24
    assert final.value("vivix_webhook_delivery_lag_seconds_sum") > 0
    assert final.value("vivix_sse_streams_open") == 0
    assert final.value("vivix_http_requests_total", route="/api/v1/generate", status="201") == 6


async def _wait_for_webhooks(http: httpx.AsyncClient, events: int) -> Scrape:
    """The scrape once every event's two deliveries have ended (delivered or gave up)."""
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        scrape = await _scrape(http)
        ended = scrape.value("vivix_webhook_deliveries_total", outcome="delivered")
        ended += scrape.value("vivix_webhook_deliveries_total", outcome="gave_up")
        if ended >= 2 * events:
            return scrape
        assert asyncio.get_running_loop().time() < deadline, ended
        await asyncio.sleep(0.3)


def _start_worker(env: dict[str, str], tmp_path: Path) -> subprocess.Popen[bytes]:
    # The render pool's forkserver socket needs a short path (AF_UNIX: 108 bytes).
    render_tmp = tempfile.mkdtemp(prefix="vvx-")
    with (tmp_path / "worker.log").open("wb") as log:  # the child keeps its own handle
        return subprocess.Popen(
            [sys.executable, "-m", "vivix", "worker", "--json"],
            env={**env, "TMPDIR": render_tmp, "VIVIX_DATA_DIR": str(tmp_path / "worker-data")},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
