"""The service as an operator runs it: a `vivix serve` process (API + embedded worker)
whose six upstream providers are configured with `VIVIX_PROVIDERS__<NAME>__BASE_URL` and
`__API_KEY` pointing at local fakes that speak each provider's public protocol.

One generation per adapter goes HTTP client → API → worker → fake upstream → our
storage → an output URL on our own host that downloads without auth."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
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
from tests.fakes.openai_images import FakeOpenAiImages, serve_on_loopback
from tests.fakes.replicate import FakeReplicate
from tests.fakes.runware import FakeRunware
from tests.fakes.xai import FakeXai
from tests.processes import free_port
from vivix.models import Generation
from vivix.runtime import Runtime

pytestmark = pytest.mark.slow

READY_TIMEOUT_S = 60.0
GENERATION_TIMEOUT_S = 90.0


@dataclass
class Upstream:
    """One provider's fake, what to ask the service for, and what the fake served."""

    provider: str
    fake: Any
    api_key: str | None
    body: dict[str, Any]
    outputs: int
    served: Callable[[], set[bytes]]
    base_url: str = ""

    def submissions(self) -> int:
        return int(self.fake.submissions)


def upstreams() -> list[Upstream]:
    fal = FakeFal(outputs=2, polls_before_done=2)
    replicate = FakeReplicate(outputs=1, polls_before_done=2)
    xai = FakeXai()
    openai = FakeOpenAiImages()
    runware = FakeRunware(polls_before_done=2)
    comfyui = FakeComfyUi(polls_queued=1, polls_running=1)
    return [
        Upstream(
            "fal", fal, fal.api_key,
            {"model": "seedream-4", "prompt": "a ceramic teapot", "resolution": "1K", "number_results": 2},
            2, lambda: {data for data, _ in fal.files.values()},
        ),
        Upstream(
            "replicate", replicate, replicate.api_token,
            {"model": "flux-1.1-pro", "prompt": "a fox in the snow", "aspect_ratio": "16:9"},
            1, lambda: {data for data, _ in replicate.files.values()},
        ),
        Upstream(
            "xai", xai, xai.api_key,
            {"model": "grok-imagine-image-quality", "prompt": "a misty forest", "resolution": "1K", "number_results": 2},
            2, lambda: set(xai.served),
        ),
        Upstream(
            "openai", openai, openai.api_key,
            {"model": "gpt-image-1", "prompt": "a water cycle infographic", "quality": "low", "number_results": 2},
            2, lambda: set(openai.served),
        ),
        Upstream(
            "runware", runware, runware.api_key,
            {"model": "flux-dev", "prompt": "dew on a spider web", "number_results": 2},
            2, lambda: {data for data, _ in runware.files.values()},
        ),
        Upstream(
            "comfyui", comfyui, None,
            {"model": "sdxl", "prompt": "an isometric cabin", "negative_prompt": "blurry", "number_results": 2},
            2, lambda: {stored.data for stored in comfyui.files.values()},
        ),
    ]  # fmt: skip


@asynccontextmanager
async def served(all_upstreams: list[Upstream]) -> AsyncIterator[None]:
    """Every fake on its own 127.0.0.1 port, in this event loop."""
    async with AsyncExitStack() as stack:
        for upstream in all_upstreams:
            upstream.base_url = await stack.enter_async_context(
                serve_on_loopback(upstream.fake.app)
            )
        yield


def service_env(runtime: Runtime, data_dir: Path, all_upstreams: list[Upstream]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("VIVIX_")}
    env.update(
        {
            "VIVIX_DATABASE_URL": runtime.settings.resolved_database_url,
            "VIVIX_DATA_DIR": str(data_dir),
            "VIVIX_SECRET_KEY": "test-secret",  # the runtime's, so our keys work there
            "VIVIX_LOG_LEVEL": "warning",
            "VIVIX_WORKER__POLL_INTERVAL_SECONDS": "0.2",
            "VIVIX_WORKER__RENDER_PROCESSES": "1",
        }
    )
    for upstream in all_upstreams:
        prefix = f"VIVIX_PROVIDERS__{upstream.provider.upper()}__"
        env[prefix + "BASE_URL"] = upstream.base_url
        if upstream.api_key is not None:
            env[prefix + "API_KEY"] = upstream.api_key
    return env


@asynccontextmanager
async def vivix_serve(env: dict[str, str], log_path: Path) -> AsyncIterator[str]:
    """`vivix serve` on a free port, awaited on /readyz; always stopped (SIGTERM, then
    SIGKILL). Yields its base URL."""
    port = free_port()
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "vivix", "serve", "--host", "127.0.0.1", "--port", str(port),
            env=env, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
            start_new_session=True,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + READY_TIMEOUT_S
            while True:
                if process.returncode is not None:
                    raise AssertionError(f"vivix serve exited early:\n{_text_of(log_path)}")
                try:
                    if (await http.get("/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if loop.time() > deadline:
                    raise AssertionError(f"vivix serve not ready:\n{_text_of(log_path)}")
                await asyncio.sleep(0.1)
        yield base
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                os.killpg(process.pid, signal.SIGKILL)
                await process.wait()


def _text_of(path: Path) -> str:
    return path.read_text("utf-8", errors="replace")


async def vivix_cli(env: dict[str, str], *args: str) -> Any:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vivix", *args, "--json",
        env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return json.loads(out)


async def wait_until_finished(
    http: httpx.AsyncClient, generation_id: str, headers: dict[str, str]
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + GENERATION_TIMEOUT_S
    while True:
        body: dict[str, Any] = (
            await http.get(f"/api/v1/generations/{generation_id}", headers=headers)
        ).json()
        if body["status"] not in ("pending", "processing"):
            return body
        if loop.time() > deadline:
            raise AssertionError(f"still {body['status']}: {body}")
        await asyncio.sleep(0.2)


async def test_the_service_renders_through_every_adapter_against_its_fake_end_to_end(
    runtime: Runtime, tmp_path: Path
) -> None:
    all_upstreams = upstreams()
    acct = await account_with_key(runtime, credits=10_000, concurrent_jobs=10)
    from vivix.admin import service as admin

    await admin.set_models(runtime, acct.name, [u.body["model"] for u in all_upstreams], allow=True)

    async with served(all_upstreams):
        env = service_env(runtime, tmp_path / "serve-data", all_upstreams)
        catalog = {m["slug"]: m for m in await vivix_cli(env, "catalog", "list")}
        for upstream in all_upstreams:
            first_route = catalog[upstream.body["model"]]["routes"][0]
            assert first_route["provider"] == upstream.provider
            assert first_route["available"] is True, first_route

        async with (
            vivix_serve(env, tmp_path / "serve.log") as base,
            httpx.AsyncClient(base_url=base, timeout=10) as http,
        ):
            submitted: dict[str, tuple[str, int]] = {}
            for upstream in all_upstreams:
                response = await http.post(
                    "/api/v1/generate", json=upstream.body, headers=acct.headers
                )
                assert response.status_code == 201, (upstream.provider, response.text)
                accepted = response.json()
                submitted[upstream.provider] = (
                    accepted["generation_id"],
                    accepted["credits_estimate"],
                )

            for upstream in all_upstreams:
                generation_id, estimate = submitted[upstream.provider]
                body = await wait_until_finished(http, generation_id, acct.headers)
                assert body["status"] == "completed", (upstream.provider, body)
                assert await provider_of(runtime, generation_id) == upstream.provider
                assert len(body["output_urls"]) == upstream.outputs
                assert body["output_url"] == body["output_urls"][0]
                served_bytes = upstream.served()
                for url in body["output_urls"]:
                    assert url.startswith(f"{base}/files/"), url
                    assert not url.startswith(upstream.base_url), "never the upstream URL"
                    async with httpx.AsyncClient(timeout=10) as anonymous:
                        download = await anonymous.get(url)  # public: no Authorization
                    assert download.status_code == 200
                    assert download.headers["content-type"].startswith("image/")
                    assert download.content in served_bytes, f"{upstream.provider}: not its bytes"
                assert 0 < body["credits_used"] <= estimate

    for upstream in all_upstreams:
        assert upstream.submissions() == 1, f"{upstream.provider} was paid once"
    await assert_ledger_consistent(runtime)


async def provider_of(runtime: Runtime, generation_id: str) -> str | None:
    async with runtime.db.read() as session:
        return (
            await session.execute(select(Generation.provider).where(Generation.id == generation_id))
        ).scalar_one()
