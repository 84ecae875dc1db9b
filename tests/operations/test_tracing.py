"""OpenTelemetry traces: one generation submitted to a real `vivix serve --no-worker` and run
by a real `vivix worker` (another process: the trace context crosses through the
generation's row) is one trace at a test-local OTLP/HTTP collector: the API's request
span → the worker's job span → the provider's submit and poll spans. Off by default, and
then neither the SDK nor the exporter is even imported."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import structlog

from tests.fakes.runware import FakeRunware
from tests.operations.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.operations.test_metrics import _start_worker, _wait_all_final
from tests.processes import running_servers, server_env
from vivix.kit import tracing
from vivix.kit.logging import configure_logging
from vivix.settings import SettingsError, load_settings

TOKEN = "tracing-test-operator-token-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
MODEL = "traced-image"
UPSTREAM = "runware:100@1"
CATALOG = f"""
mode = "extend"
[[models]]
slug = "{MODEL}"
name = "Traced image"
category = "image"
creator = "test"
description = "tracing test"
deadline_seconds = 120
default_tiers = ["pro"]
[models.params]
prompt = {{ type = "string", required = true, max_length = 200 }}
[[models.pricing]]
credits = 4
[[models.routes]]
provider = "runware"
upstream_model = "{UPSTREAM}"
"""
# OTLP's SpanKind numbers.
SERVER, CLIENT, CONSUMER = 2, 3, 5
# A client's own trace, which the API continues.
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


@pytest.fixture
async def runware() -> AsyncIterator[tuple[FakeRunware, str]]:
    fake = FakeRunware("rw-tracing-key", polls_before_done=2)
    async with fake.serve() as base_url:
        yield fake, base_url


@pytest.fixture
def collector() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    yield receiver
    receiver.close()


@pytest.mark.slow
async def test_one_generation_is_one_trace_across_api_worker_and_provider(
    tmp_path: Path, runware: tuple[FakeRunware, str], collector: OtlpReceiver
) -> None:
    _fake, fake_url = runware
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(CATALOG)
    env = server_env(
        DATABASE_URL=f"sqlite:///{tmp_path / 'vivix.db'}",
        DATA_DIR=str(tmp_path / "data"),
        STORAGE_URL=(tmp_path / "outputs").as_uri(),
        SECRET_KEY="tracing-secret",
        ADMIN_TOKEN=TOKEN,
        CATALOG_PATH=str(catalog),
        PROVIDERS__RUNWARE__API_KEY="rw-tracing-key",
        PROVIDERS__RUNWARE__BASE_URL=fake_url,
        WORKER__POLL_INTERVAL_SECONDS="0.2",
        OTEL_ENDPOINT=collector.url,
    )
    env["OTEL_BSP_SCHEDULE_DELAY"] = "200"  # the SDK's batch delay (ms): spans arrive soon
    migrate = [sys.executable, "-m", "vivix", "migrate", "--json"]
    await asyncio.to_thread(subprocess.run, migrate, env=env, check=True, timeout=120)
    with running_servers(1, env, tmp_path / "logs", database_has_accounts=True) as (api,):
        async with httpx.AsyncClient(base_url=api.base_url, timeout=30) as http:
            created = await http.post(
                "/admin/v1/accounts", json={"name": "traced", "credits": 1000}, headers=ADMIN
            )
            assert created.status_code == 201, created.text
            key_response = await http.post("/admin/v1/accounts/traced/keys", json={}, headers=ADMIN)
            key = key_response.json()["key"]
            headers = {"Authorization": f"Bearer {key}"}
            submitted = await http.post(
                "/api/v1/generate", json={"model": MODEL, "prompt": "a traced fox"}, headers=headers
            )
            assert submitted.status_code == 201, submitted.text
            generation_id = submitted.json()["generation_id"]
            traceparent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
            listed = await http.get(
                "/api/v1/models", headers={**headers, "traceparent": traceparent}
            )
            assert listed.status_code == 200

            worker = _start_worker(env, tmp_path)
            try:
                bodies = await _wait_all_final(http, key, [generation_id], within_s=120)
            finally:
                worker.send_signal(signal.SIGTERM)  # a stopping worker flushes its spans
                worker.wait(30)
    assert bodies[generation_id]["status"] == "completed", bodies

    spans = await _wait_for_spans(collector, generation_id)
    (submit,) = [
        s
        for s in spans
        if s.attributes.get("vivix.generation_id") == generation_id and s.kind == SERVER
    ]
    assert (submit.service, submit.name) == ("vivix-api", "POST /api/v1/generate")
    assert submit.attributes["http.response.status_code"] == 201
    assert submit.attributes["vivix.request_id"] == submitted.headers["x-request-id"]
    assert submit.parent_span_id == ""  # the client sent no trace: the API starts it
    (job,) = [s for s in spans if s.kind == CONSUMER]
    assert (job.service, job.name) == ("vivix-worker", f"job {MODEL}")
    assert job.trace_id == submit.trace_id  # carried by the generation's row
    assert job.parent_span_id == submit.span_id
    assert job.attributes["vivix.generation_id"] == generation_id
    assert job.attributes["vivix.status"] == "completed"
    calls = [s for s in spans if s.kind == CLIENT]
    assert {s.name for s in calls} == {"runware submit", "runware poll"}, calls
    assert len([s for s in calls if s.name == "runware poll"]) >= 2  # done on the second poll
    for call in calls:
        assert (call.service, call.trace_id) == ("vivix-worker", submit.trace_id)
        assert call.parent_span_id == job.span_id
        assert call.attributes["vivix.route"] == UPSTREAM
    assert not any(s.error for s in [submit, job, *calls])

    (models,) = [s for s in collector.received() if s.name == "GET /api/v1/models"]
    assert (models.trace_id, models.parent_span_id) == (CLIENT_TRACE, CLIENT_SPAN)


async def _wait_for_spans(collector: OtlpReceiver, generation_id: str) -> list[ReceivedSpan]:
    """The spans of the generation's trace, once the API, job and provider spans are in."""
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        received = collector.received()
        trace_ids = {
            s.trace_id for s in received if s.attributes.get("vivix.generation_id") == generation_id
        }
        spans = [s for s in received if s.trace_id in trace_ids]
        kinds = {s.kind for s in spans}
        if {SERVER, CONSUMER, CLIENT} <= kinds:
            return spans
        assert asyncio.get_running_loop().time() < deadline, received
        await asyncio.sleep(0.2)


@pytest.mark.slow
def test_off_by_default_the_sdk_and_exporter_are_not_loaded(tmp_path: Path) -> None:
    # A fresh interpreter serves a submit and runs the job (embedded worker), tracing off.
    script = f"""
import asyncio, sys, time
from starlette.testclient import TestClient
from vivix.app import create_app
from vivix.migrations import upgrade_to_head
from vivix.settings import load_settings

settings = load_settings()
asyncio.run(upgrade_to_head(settings.resolved_database_url))
admin = {{"Authorization": "Bearer {TOKEN}"}}
with TestClient(create_app(settings, embedded_worker=True)) as client:
    made = client.post("/admin/v1/accounts", json={{"name": "off", "credits": 100}}, headers=admin)
    assert made.status_code == 201, made.text
    key = client.post("/admin/v1/accounts/off/keys", json={{}}, headers=admin).json()["key"]
    auth = {{"Authorization": "Bearer " + key}}
    body = {{"model": "vivix-local-image", "prompt": "untraced"}}
    submitted = client.post("/api/v1/generate", json=body, headers=auth)
    assert submitted.status_code == 201, submitted.text
    url = "/api/v1/generations/" + submitted.json()["generation_id"]
    deadline = time.monotonic() + 90
    while client.get(url, headers=auth).json()["status"] != "completed":
        assert time.monotonic() < deadline, client.get(url, headers=auth).text
        time.sleep(0.2)
# FastAPI itself imports opentelemetry-api; the SDK, exporter and protobuf are ours.
heavy = ("opentelemetry.sdk", "opentelemetry.exporter", "opentelemetry.proto", "google.protobuf")
loaded = sorted(m for m in sys.modules if m.startswith(heavy))
assert not loaded, loaded
print("ok")
"""
    env = server_env(
        DATABASE_URL=f"sqlite:///{tmp_path / 'vivix.db'}",
        DATA_DIR=str(tmp_path / "data"),
        STORAGE_URL=(tmp_path / "outputs").as_uri(),
        SECRET_KEY="tracing-off-secret",
        ADMIN_TOKEN=TOKEN,
        WORKER__POLL_INTERVAL_SECONDS="0.2",
        WORKER__RENDER_PROCESSES="1",
    )
    env["TMPDIR"] = tempfile.mkdtemp(prefix="vvx-")  # the render pool's socket path is short
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180
    )
    assert done.stdout.strip() == "ok", done.stdout + done.stderr


def test_an_endpoint_that_is_not_an_http_url_is_refused_naming_it() -> None:
    with pytest.raises(SettingsError, match="VIVIX_OTEL_ENDPOINT") as refused:
        load_settings(otel_endpoint="collector:4317")
    assert "http://" in str(refused.value)
    assert load_settings(otel_endpoint="http://collector:4318").otel_endpoint
    assert load_settings(otel_endpoint="").otel_endpoint is None


def test_log_lines_inside_a_span_carry_its_trace_id(
    collector: OtlpReceiver, capsys: pytest.CaptureFixture[str]
) -> None:
    log = structlog.get_logger("test")
    configure_logging("info", log_format="json")
    tracing.configure_tracing(collector.url, "vivix-test")
    try:
        with tracing.span("outer"):
            log.info("inside")
        log.info("outside")
    finally:
        tracing.shutdown_tracing()
        configure_logging("info")
    inside, outside = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    (outer,) = collector.received()
    assert inside["trace_id"] == outer.trace_id
    assert "trace_id" not in outside
