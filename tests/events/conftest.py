from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from tests.events.sse import Stream
from tests.factories import AccountWithKey, account_with_key
from tests.fakes.xai import FakeXai
from tests.openapi_conformance import ConformanceCheckingTransport
from tests.worker.conftest import FAST_WORKER
from vivix.admin import service as admin
from vivix.app import create_app
from vivix.providers.registry import ProviderRegistry
from vivix.providers.xai.adapter import XaiAdapter
from vivix.runtime import Runtime
from vivix.settings import ProviderSettings
from vivix.worker.runner import Worker

MODEL = "clip"
CATALOG = f"""
[[models]]
slug = "{MODEL}"
name = "A short clip"
category = "video"
creator = "test"
description = "One xAI route (a fake that reports progress)."
deadline_seconds = 120
[models.params]
prompt = {{ type = "string", required = true, max_length = 2000 }}
duration = {{ type = "integer", min = 1, max = 15, default = 1 }}
[[models.pricing]]
credits = 10
[[models.routes]]
provider = "xai"
upstream_model = "grok-imagine-video"

[[models]]
slug = "other"
name = "Another clip"
category = "video"
creator = "test"
description = "The same route under another slug (filters)."
deadline_seconds = 120
[models.params]
prompt = {{ type = "string", required = true, max_length = 2000 }}
duration = {{ type = "integer", min = 1, max = 15, default = 1 }}
[[models.pricing]]
credits = 10
[[models.routes]]
provider = "xai"
upstream_model = "grok-imagine-video"
"""


@pytest.fixture
def settings_overrides(tmp_path: Path) -> dict[str, object]:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(CATALOG)
    return {
        "worker": {**FAST_WORKER, "lease_seconds": 15.0, "heartbeat_seconds": 1.0},
        "catalog_path": catalog,
        "providers": {"xai": {"api_key": "xai-test-key"}},
        "events": {"ping_seconds": 0.5, "poll_interval_seconds": 0.5},
    }


@dataclass
class Served:
    """The app on a real socket (streams need a server that streams), an xAI fake whose
    video jobs report progress, and a worker to start when a test wants one."""

    runtime: Runtime
    url: str
    xai: FakeXai
    registry: ProviderRegistry
    account: AccountWithKey

    @property
    def headers(self) -> dict[str, str]:
        return self.account.headers

    def http(self) -> httpx.AsyncClient:
        # Every /api/v1 answer that is not a stream is checked against /openapi.json.
        transport = ConformanceCheckingTransport(httpx.AsyncHTTPTransport())
        return httpx.AsyncClient(
            base_url=self.url, timeout=httpx.Timeout(30.0), transport=transport
        )

    async def submit(self, model: str = MODEL, headers: dict[str, str] | None = None) -> str:
        async with self.http() as http:
            response = await http.post(
                "/api/v1/generate",
                json={"model": model, "prompt": "waves at dusk"},
                headers=headers or self.headers,
            )
        assert response.status_code == 201, response.text
        return str(response.json()["generation_id"])

    @asynccontextmanager
    async def stream(
        self,
        path: str,
        headers: dict[str, str] | None = None,
        cookies: dict[str, str] | None = None,
    ) -> AsyncIterator[Stream]:
        async with self.http() as http:
            http.cookies.update(cookies or {})
            chosen = headers if headers is not None else self.headers
            async with http.stream("GET", path, headers=chosen) as response:
                yield Stream(response)

    @asynccontextmanager
    async def worker(self, concurrency: int = 2) -> AsyncIterator[Worker]:
        worker = Worker(self.runtime, concurrency=concurrency, registry=self.registry)
        await worker.start()
        try:
            yield worker
        finally:
            await worker.stop(grace_s=0)


@asynccontextmanager
async def serving(runtime: Runtime) -> AsyncIterator[str]:
    app = create_app(runtime.settings, runtime=runtime)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    async with asyncio.timeout(30):
        while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
            await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        server.force_exit = True
        await task
        sock.close()


@pytest.fixture
async def served(runtime: Runtime) -> AsyncIterator[Served]:
    xai = FakeXai()
    xai.video_polls_before_done = 2
    adapter = XaiAdapter.standalone(
        ProviderSettings(
            api_key=xai.api_key, base_url="http://xai.test", retry_backoff_seconds=0.01
        ),
        transport=httpx.ASGITransport(app=xai.app),
    )
    registry = ProviderRegistry({"xai": adapter})
    account = await account_with_key(runtime, credits=10_000)
    await admin.set_models(runtime, account.name, [MODEL, "other"], allow=True)
    try:
        async with serving(runtime) as url:
            yield Served(runtime, url, xai, registry, account)
    finally:
        await registry.aclose()
