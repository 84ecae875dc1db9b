"""What a failure tells whom (finding 7 of the fault audit): customers get a stable code
and message, never a provider's or our own internal text; operators get the detail
(`last_error`, the attempt history, the logs); provider credentials reach none of them.
Output downloads go through the same egress guard as reference images: a redirect (or a
URL) leading off the provider's origin to a non-public address is never fetched."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from tests.audit import assert_ledger_consistent
from tests.factories import account_with_key
from tests.fakes.fal import FakeFal
from tests.worker.conftest import FAST_WORKER
from tests.worker.helpers import wait_for_status
from vivix.admin import service as admin
from vivix.providers.fal.adapter import FalAdapter
from vivix.providers.registry import ProviderRegistry
from vivix.runtime import Runtime
from vivix.settings import ProviderSettings
from vivix.worker.runner import Worker

FAL_KEY = "fal-key-5ecr3t-0a1b2c3d4e5f"
CATALOG = """
[[models]]
slug = "fal-image"
name = "An image model on fal"
category = "image"
creator = "test"
description = "One fal route."
[models.params]
prompt = { type = "string", required = true, max_length = 2000 }
[[models.pricing]]
credits = 10
[[models.routes]]
provider = "fal"
upstream_model = "fal-ai/flux/schnell"
"""
STABLE = "The provider could not complete this generation; nothing was charged."


@pytest.fixture
def settings_overrides(tmp_path: Path) -> dict[str, object]:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(CATALOG)
    return {
        "worker": {
            **FAST_WORKER,
            "lease_seconds": 15.0,
            "heartbeat_seconds": 1.0,
            "route_attempts": 2,
            "route_retry_backoff_seconds": 0.01,
        },
        "providers": {"fal": {"api_key": FAL_KEY}},
        "catalog_path": catalog,
    }


@pytest.fixture
def fal() -> FakeFal:
    return FakeFal(api_key=FAL_KEY, polls_before_done=0)


async def start_worker(runtime: Runtime, adapter: FalAdapter) -> Worker:
    worker = Worker(runtime, concurrency=2, registry=ProviderRegistry({"fal": adapter}))
    await worker.start()
    return worker


@pytest.fixture
async def worker(runtime: Runtime, fal: FakeFal) -> AsyncIterator[Worker]:
    adapter = FalAdapter.standalone(
        ProviderSettings(api_key=FAL_KEY, base_url="http://fal.test", retry_backoff_seconds=0.01),
        transport=httpx.ASGITransport(app=fal.app),
    )
    running = await start_worker(runtime, adapter)
    try:
        yield running
    finally:
        await running.stop(grace_s=0)
        await adapter.aclose()


async def run_one(runtime: Runtime, client: httpx.AsyncClient) -> dict[str, Any]:
    acct = await account_with_key(runtime, credits=100)
    response = await client.post(
        "/api/v1/generate", json={"model": "fal-image", "prompt": "a fox"}, headers=acct.headers
    )
    assert response.status_code == 201, response.text
    body = await wait_for_status(client, response.json()["generation_id"], acct.headers)
    credits = (await client.get("/api/v1/credits", headers=acct.headers)).json()
    assert (credits["balance"], credits["held"]) == (100, 0)
    return body


def assert_customer_sees_only_the_stable_failure(body: dict[str, Any]) -> None:
    assert body["status"] == "failed", body
    assert body["error"] == "PROVIDER_ERROR"
    assert body["message"] == STABLE
    assert body["credits_used"] == 0


async def test_a_provider_echoing_our_key_reaches_no_log_and_no_error_text(
    runtime: Runtime,
    client: httpx.AsyncClient,
    worker: Worker,
    fal: FakeFal,
    capfd: pytest.CaptureFixture[str],
) -> None:
    # A proxy or a provider that quotes the credential back in its error.
    fal.inject(
        "submit", 401, times=10, body={"detail": f"No user found for Authorization: Key {FAL_KEY}"}
    )
    body = await run_one(runtime, client)
    assert_customer_sees_only_the_stable_failure(body)
    shown = await admin.show_generation(runtime, body["generation_id"])
    assert "401" in shown["last_error"]  # operators see what happened...
    assert "[redacted]" in shown["last_error"]
    logged = capfd.readouterr()
    everything = f"{logged.out}{logged.err}{shown}{body}"
    assert "provider_route_failed" in everything
    assert FAL_KEY not in everything  # ...but never the key
    assert FAL_KEY[4:20] not in everything
    await assert_ledger_consistent(runtime)


async def test_internal_error_text_stays_with_operators(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    # Nothing listens on port 9 of this machine: every call fails to connect.
    adapter = FalAdapter.standalone(
        ProviderSettings(api_key=FAL_KEY, base_url="http://127.0.0.1:9", retry_backoff_seconds=0.01)
    )
    worker = await start_worker(runtime, adapter)
    try:
        body = await run_one(runtime, client)
    finally:
        await worker.stop(grace_s=0)
        await adapter.aclose()
    assert_customer_sees_only_the_stable_failure(body)
    text = str(body)
    for internal in ("connect", "Errno", "127.0.0.1", "fal:", "Traceback"):
        assert internal not in text
    shown = await admin.show_generation(runtime, body["generation_id"])
    assert "cannot connect to fal" in shown["last_error"]
    await assert_ledger_consistent(runtime)


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://10.1.2.3/internal",
        "http://[::1]:8080/admin",
        "http://127.0.0.1:6379/",
        "http://0x7f.1/",
    ],
)
async def test_an_output_redirected_to_a_private_address_is_never_fetched(
    runtime: Runtime,
    client: httpx.AsyncClient,
    worker: Worker,
    fal: FakeFal,
    target: str,
) -> None:
    reached: list[str] = []

    async def redirect(request: Any) -> RedirectResponse:
        return RedirectResponse(target, status_code=302)

    async def internal(request: Any) -> Response:
        reached.append(str(request.url))
        return Response(b"secret", media_type="image/png")

    # Every file URL fal hands out now redirects to the target; the same in-process
    # transport would answer the target too, so a fetch of it would be seen.
    fal.app.router.routes[0:0] = [
        Route("/files/{name}", redirect),
        *(Route(path, internal) for path in ("/latest/{rest:path}", "/internal", "/admin", "/")),
    ]
    body = await run_one(runtime, client)
    assert_customer_sees_only_the_stable_failure(body)
    assert reached == []
    shown = await admin.show_generation(runtime, body["generation_id"])
    assert "refused" in shown["last_error"]
    assert fal.submissions == 1
    await assert_ledger_consistent(runtime)
