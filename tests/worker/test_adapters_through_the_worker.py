"""Every upstream adapter through the real worker, against its protocol fake: a job that
hangs past the model's deadline ends in TIMEOUT, a client cancel mid-render stops the
upstream job, and a worker stopped mid-job hands it over so the next one resumes it
without a second upstream submit. Each ends with the hold released or captured once.

Adapters reach their fakes in-process (httpx.ASGITransport); the service end to end over
real sockets is tests/providers/test_service_end_to_end.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from tests.audit import assert_ledger_consistent
from tests.factories import account_with_key
from tests.fakes.comfyui import FakeComfyUi
from tests.fakes.fal import FakeFal
from tests.fakes.openai_images import FakeOpenAiImages
from tests.fakes.replicate import FakeReplicate
from tests.fakes.runware import FakeRunware
from tests.fakes.xai import FakeXai
from tests.worker.conftest import FAST_WORKER
from tests.worker.helpers import wait_for_status
from vivix.models import Generation
from vivix.providers.base import ProviderAdapter
from vivix.providers.comfyui.adapter import ComfyUiAdapter
from vivix.providers.fal.adapter import FalAdapter
from vivix.providers.openai.adapter import OpenAiImagesAdapter
from vivix.providers.registry import ProviderRegistry
from vivix.providers.replicate.adapter import ReplicateAdapter
from vivix.providers.runware.adapter import RunwareAdapter
from vivix.providers.xai.adapter import XaiAdapter
from vivix.runtime import Runtime
from vivix.settings import ProviderSettings
from vivix.worker.runner import Worker

CREDITS = 1000
NEVER = 10**9
SHORT_DEADLINE_S = 8  # room for claim, intent and submit on a loaded 2-core machine


@dataclass
class Upstream:
    """One provider's fake and the knobs these scenarios need from it."""

    provider: str
    category: str
    upstream_model: str
    fake: Any
    adapter: Callable[[], ProviderAdapter]
    hang: Callable[[], None]  # jobs submitted from now on never finish
    finish: Callable[[], None]  # hung jobs finish at their next status check
    # Upstream cancels the fake saw; None where the protocol documents no cancel.
    cancels: Callable[[], int] | None
    # The job is resumable after the submit answered (async job protocols).
    resumable: bool = True

    def submissions(self) -> int:
        return int(self.fake.submissions)


def _fal() -> Upstream:
    fake = FakeFal(outputs=2)

    def finish() -> None:
        for job in fake.jobs.values():
            job.polls_before_done = 0

    return Upstream(
        "fal", "image", "fal-ai/flux/schnell", fake,
        lambda: FalAdapter.standalone(
            ProviderSettings(
                api_key=fake.api_key, base_url="http://fal.test", retry_backoff_seconds=0.01
            ),
            transport=httpx.ASGITransport(app=fake.app),
        ),
        lambda: setattr(fake, "polls_before_done", NEVER), finish, lambda: fake.cancels,
    )  # fmt: skip


def _replicate() -> Upstream:
    fake = FakeReplicate(outputs=2)

    def finish() -> None:
        for prediction in fake.predictions.values():
            prediction.polls_before_done = 0

    return Upstream(
        "replicate", "image", "black-forest-labs/flux-schnell", fake,
        lambda: ReplicateAdapter.standalone(
            ProviderSettings(
                api_key=fake.api_token, base_url="http://replicate.test", retry_backoff_seconds=0.01
            ),
            transport=httpx.ASGITransport(app=fake.app),
        ),
        lambda: setattr(fake, "polls_before_done", NEVER), finish, lambda: fake.cancels,
    )  # fmt: skip


def _xai() -> Upstream:
    fake = FakeXai()
    return Upstream(
        "xai", "video", "grok-imagine-video", fake,
        lambda: XaiAdapter.standalone(
            ProviderSettings(
                api_key=fake.api_key, base_url="http://xai.test", retry_backoff_seconds=0.01
            ),
            transport=httpx.ASGITransport(app=fake.app),
        ),
        lambda: setattr(fake, "video_polls_before_done", None),
        lambda: setattr(fake, "video_polls_before_done", 0),
        None,  # xAI documents no way to stop a video job
    )  # fmt: skip


def _openai() -> Upstream:
    fake = FakeOpenAiImages()
    return Upstream(
        "openai", "image", "gpt-image-1", fake,
        lambda: OpenAiImagesAdapter.standalone(
            ProviderSettings(
                api_key=fake.api_key, base_url="http://openai.test", retry_backoff_seconds=0.01
            ),
            transport=httpx.ASGITransport(app=fake.app),
        ),
        lambda: setattr(fake, "submit_delay_s", 3600.0),  # the one synchronous call hangs
        fake.delay.release,
        None,  # synchronous: there is no job to stop, only our request to drop
        resumable=False,  # gpt-image answers base64 in the call itself: nothing to resume
    )  # fmt: skip


def _runware() -> Upstream:
    fake = FakeRunware()

    def finish() -> None:
        for task in fake.tasks.values():
            task.polls_before_done = 0

    return Upstream(
        "runware", "image", "runware:100@1", fake,
        lambda: RunwareAdapter.standalone(
            ProviderSettings(
                api_key=fake.api_key, base_url="http://runware.test", retry_backoff_seconds=0.01
            ),
            transport=httpx.ASGITransport(app=fake.app),
        ),
        lambda: setattr(fake, "polls_before_done", NEVER), finish,
        None,  # Runware documents no task cancel
    )  # fmt: skip


def _comfyui() -> Upstream:
    fake = FakeComfyUi()

    def finish() -> None:
        for run in fake.runs.values():
            run.polls_running = 0

    return Upstream(
        "comfyui", "image", "sdxl-base-1.0", fake,
        lambda: ComfyUiAdapter.standalone(
            ProviderSettings(
                api_key="", base_url="http://comfyui.test", retry_backoff_seconds=0.01
            ),
            transport=httpx.ASGITransport(app=fake.app),
        ),
        lambda: setattr(fake, "polls_running", NEVER), finish,
        lambda: len(fake.deleted) + len(fake.interrupts),  # /queue delete or /interrupt
    )  # fmt: skip


UPSTREAMS = {
    "fal": _fal,
    "replicate": _replicate,
    "xai": _xai,
    "openai": _openai,
    "runware": _runware,
    "comfyui": _comfyui,
}
RESUMABLE = [name for name, make in UPSTREAMS.items() if make().resumable]


def catalog_toml() -> str:
    """Two models per provider, one route each: `<provider>` and `<provider>-short`,
    whose deadline (8 s) passes while the job is polled even on a loaded machine."""
    models = []
    for name, make in UPSTREAMS.items():
        upstream = make()
        if upstream.category == "video":
            params = 'duration = { type = "integer", min = 1, max = 15, default = 1 }'
        else:
            params = 'number_results = { type = "integer", min = 1, max = 4, default = 2 }'
        for slug, deadline in ((name, 120), (f"{name}-short", SHORT_DEADLINE_S)):
            models.append(
                f"""
[[models]]
slug = "{slug}"
name = "{slug} through the worker"
category = "{upstream.category}"
creator = "test"
description = "One {name} route."
deadline_seconds = {deadline}
[models.params]
prompt = {{ type = "string", required = true, max_length = 2000 }}
{params}
[[models.pricing]]
credits = 10
[[models.routes]]
provider = "{name}"
upstream_model = "{upstream.upstream_model}"
"""
            )
    return "".join(models)


@pytest.fixture
def settings_overrides(tmp_path: Path) -> dict[str, object]:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(catalog_toml())
    return {
        # A lease a loaded machine can't lose: a lost lease asks the upstream to stop.
        "worker": {
            **FAST_WORKER,
            "lease_seconds": 15.0,
            "heartbeat_seconds": 1.0,
            "route_attempts": 1,
        },
        "catalog_path": catalog,
        "providers": {
            "fal": {"api_key": "fal-test-key"},
            "replicate": {"api_key": "r8_test_token"},
            "xai": {"api_key": "xai-test-key"},
            "openai": {"api_key": "sk-test-key"},
            "runware": {"api_key": "rw-test-key"},
            "comfyui": {"base_url": "http://comfyui.test"},
        },
    }


@pytest.fixture(params=list(UPSTREAMS))
def upstream(request: pytest.FixtureRequest) -> Upstream:
    return UPSTREAMS[request.param]()


@dataclass
class Scenario:
    runtime: Runtime
    client: httpx.AsyncClient
    upstream: Upstream
    registry: ProviderRegistry
    headers: dict[str, str]

    def worker(self) -> Worker:
        return Worker(self.runtime, concurrency=1, registry=self.registry)

    async def submit(self, slug: str) -> str:
        body = {"model": slug, "prompt": "a lighthouse in a storm"}
        response = await self.client.post("/api/v1/generate", json=body, headers=self.headers)
        assert response.status_code == 201, response.text
        return str(response.json()["generation_id"])

    async def wallet(self) -> tuple[int, int]:
        credits = (await self.client.get("/api/v1/credits", headers=self.headers)).json()
        return credits["balance"], credits["held"]

    async def until(self, condition: Callable[[], Any], what: str) -> None:
        async with asyncio.timeout(30):
            while True:
                if await condition():
                    return
                await asyncio.sleep(0.05)
        raise AssertionError(what)  # pragma: no cover - the timeout raises first

    async def handle_stored(self, generation_id: str) -> bool:
        """The provider's handle is stored: more than the intent written before the submit."""
        async with self.runtime.db.read() as session:
            handle = (
                await session.execute(
                    select(Generation.upstream_handle).where(Generation.id == generation_id)
                )
            ).scalar_one()
        return handle is not None and not _is_intent(handle)


@pytest.fixture
async def scenario(
    runtime: Runtime, client: httpx.AsyncClient, upstream: Upstream
) -> AsyncIterator[Scenario]:
    registry = ProviderRegistry({upstream.provider: upstream.adapter()})
    acct = await account_with_key(runtime, credits=CREDITS)
    from vivix.admin import service as admin

    slugs = [upstream.provider, f"{upstream.provider}-short"]
    await admin.set_models(runtime, acct.name, slugs, allow=True)
    try:
        yield Scenario(runtime, client, upstream, registry, acct.headers)
    finally:
        upstream.finish()  # also releases a hung synchronous answer
        await registry.aclose()


async def _started(scenario: Scenario, generation_id: str) -> bool:
    """Submitted upstream, and (where there is one) its handle stored."""
    if scenario.upstream.submissions() < 1:
        return False
    return not scenario.upstream.resumable or await scenario.handle_stored(generation_id)


async def test_a_job_hanging_past_the_models_deadline_ends_in_timeout_with_a_refund(
    scenario: Scenario,
) -> None:
    upstream = scenario.upstream
    upstream.hang()
    worker = scenario.worker()
    await worker.start()
    try:
        generation_id = await scenario.submit(f"{upstream.provider}-short")
        body = await wait_for_status(scenario.client, generation_id, scenario.headers)
    finally:
        await worker.stop(grace_s=0)

    assert body["status"] == "failed"
    assert body["error"] == "TIMEOUT"
    assert f"{SHORT_DEADLINE_S} s" in body["message"]
    assert body["credits_used"] == 0
    assert await scenario.wallet() == (CREDITS, 0)
    assert upstream.submissions() == 1
    if upstream.cancels is not None:
        assert upstream.cancels() == 1, "the upstream job was asked to stop"
    await assert_ledger_consistent(scenario.runtime)


async def test_a_client_cancel_mid_render_refunds_and_stops_the_upstream_job(
    scenario: Scenario,
) -> None:
    upstream = scenario.upstream
    upstream.hang()
    worker = scenario.worker()
    await worker.start()
    try:
        generation_id = await scenario.submit(upstream.provider)
        await scenario.until(lambda: _started(scenario, generation_id), "never submitted")
        response = await scenario.client.post(
            f"/api/v1/generations/{generation_id}/cancel", headers=scenario.headers
        )
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "canceled"
        if upstream.cancels is not None:
            cancels = upstream.cancels

            async def asked_to_stop() -> bool:
                return cancels() >= 1

            await scenario.until(asked_to_stop, "the upstream job was never asked to stop")
    finally:
        await worker.stop(grace_s=0)

    body = (
        await scenario.client.get(f"/api/v1/generations/{generation_id}", headers=scenario.headers)
    ).json()
    assert body["status"] == "canceled"
    assert body["credits_used"] == 0
    assert await scenario.wallet() == (CREDITS, 0)
    assert upstream.submissions() == 1
    if upstream.cancels is not None:
        assert upstream.cancels() == 1
    await assert_ledger_consistent(scenario.runtime)


@pytest.mark.parametrize("upstream", RESUMABLE, indirect=True)
async def test_a_worker_stopped_mid_job_hands_it_over_and_the_next_resumes_it_paying_once(
    scenario: Scenario,
) -> None:
    upstream = scenario.upstream
    upstream.hang()
    first = scenario.worker()
    await first.start()
    try:
        generation_id = await scenario.submit(upstream.provider)
        await scenario.until(lambda: _started(scenario, generation_id), "never submitted")
    finally:
        await first.stop(grace_s=0)  # SIGTERM past its grace: the job goes back to the queue
    upstream.finish()  # the upstream job completes while no worker watches

    second = scenario.worker()
    await second.start()
    try:
        body = await wait_for_status(scenario.client, generation_id, scenario.headers)
    finally:
        await second.stop(grace_s=0)

    assert body["status"] == "completed", body
    assert upstream.submissions() == 1, "resumed the stored upstream job, not paid twice"
    if upstream.cancels is not None:
        assert upstream.cancels() == 0
    assert body["credits_used"] == (20 if upstream.category == "image" else 10)
    assert len(body["output_urls"]) == (2 if upstream.category == "image" else 1)
    for url in body["output_urls"]:
        assert url.startswith("http://testserver/files/")
        assert (await scenario.client.get(url)).status_code == 200
    await assert_ledger_consistent(scenario.runtime)


# Where the provider takes an id of ours, or lets us find our request again.
FINDABLE = ["fal", "replicate", "runware", "comfyui"]


def _answer_late(upstream: Upstream) -> None:
    """Submits are accepted upstream at once but answered only after an hour: the worker
    is stopped while its submit is still in flight, before it could store a handle."""
    fake = upstream.fake
    if upstream.provider == "replicate":
        fake.create_delay_s = 3600.0
    else:
        fake.submit_delay_s = 3600.0


def _answer_promptly(upstream: Upstream) -> None:
    fake = upstream.fake
    if upstream.provider == "replicate":
        fake.create_delay_s = 0.0
    else:
        fake.submit_delay_s = 0.0


@pytest.mark.parametrize("upstream", FINDABLE, indirect=True)
async def test_a_worker_lost_between_the_providers_submit_and_storing_its_id_pays_once(
    scenario: Scenario,
) -> None:
    upstream = scenario.upstream
    upstream.hang()
    _answer_late(upstream)
    first = scenario.worker()
    await first.start()
    try:
        generation_id = await scenario.submit(upstream.provider)

        async def accepted_upstream() -> bool:
            return upstream.submissions() >= 1

        await scenario.until(accepted_upstream, "the submit never reached the provider")
        assert not await scenario.handle_stored(generation_id)
    finally:
        await first.stop(grace_s=0)  # gone mid-submit: only our intent is stored
    assert await _intent_only(scenario, generation_id)
    _answer_promptly(upstream)
    upstream.finish()

    second = scenario.worker()
    await second.start()
    try:
        body = await wait_for_status(scenario.client, generation_id, scenario.headers)
    finally:
        await second.stop(grace_s=0)

    assert body["status"] == "completed", body
    assert upstream.submissions() == 1, "found the job our request key made, not paid twice"
    assert body["credits_used"] == 20
    await assert_ledger_consistent(scenario.runtime)


async def _intent_only(scenario: Scenario, generation_id: str) -> bool:
    async with scenario.runtime.db.read() as session:
        handle = (
            await session.execute(
                select(Generation.upstream_handle).where(Generation.id == generation_id)
            )
        ).scalar_one()
    return _is_intent(handle)


def _is_intent(handle: object) -> bool:
    return isinstance(handle, dict) and set(handle) == {"request_key", "requested_at"}


@pytest.mark.parametrize("upstream", ["fal", "xai"], indirect=True)
async def test_a_providers_progress_reaches_the_status_read_and_only_goes_up(
    scenario: Scenario,
) -> None:
    """fal's tqdm bars in its status logs and xAI's `progress` percent, through the
    worker's store, as clients read them (the fakes count up on every status check)."""
    upstream = scenario.upstream
    upstream.hang()
    worker = scenario.worker()
    await worker.start()
    seen: list[float] = []
    try:
        generation_id = await scenario.submit(upstream.provider)
        url = f"/api/v1/generations/{generation_id}"
        async with asyncio.timeout(60):
            while len(set(seen)) < 2:
                body = (await scenario.client.get(url, headers=scenario.headers)).json()
                assert body["status"] in ("pending", "processing"), body
                if body.get("progress") is not None:
                    seen.append(body["progress"])
                await asyncio.sleep(0.2)
        canceled = await scenario.client.post(f"{url}/cancel", headers=scenario.headers)
        assert canceled.status_code == 200, canceled.text
    finally:
        await worker.stop(grace_s=0)

    assert seen == sorted(seen), seen
    assert all(0 < fraction <= 1 for fraction in seen), seen
    assert await scenario.wallet() == (CREDITS, 0)
    await assert_ledger_consistent(scenario.runtime)
