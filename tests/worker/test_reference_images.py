"""Reference image URLs can't make Vivix reach private addresses (SSRF)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest

from tests.audit import assert_ledger_consistent
from tests.factories import account_with_key
from tests.fakes.media import png_bytes
from tests.worker.conftest import FAST_WORKER
from tests.worker.helpers import wait_for_status
from vivix.kit.runtime import Runtime
from vivix.providers.registry import ProviderRegistry
from vivix.worker.runner import Worker

TRUSTED_HOST = "images.example.com"  # stands in for a public image host; really 127.0.0.1


@dataclass
class Listener:
    """A plain HTTP server on loopback that records every request line it receives."""

    port: int = 0
    paths: list[str] = field(default_factory=list)
    server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request_line = (await reader.readline()).decode("latin-1")
        while (await reader.readline()) not in (b"\r\n", b"\n", b""):
            pass
        path = request_line.split(" ")[1] if " " in request_line else "?"
        self.paths.append(path)
        if path == "/ref.png":
            body = png_bytes(8, 8, 1)
            head = f"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {len(body)}\r\n"
        elif path == "/redirect.png":
            body = b""
            head = f"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{self.port}/secret\r\nContent-Length: 0\r\n"
        else:
            body = b"internal secret"
            head = f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
        writer.write((head + "Connection: close\r\n\r\n").encode() + body)
        await writer.drain()
        writer.close()


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    recorder = Listener()
    recorder.server = await asyncio.start_server(recorder.handle, "127.0.0.1", 0)
    recorder.port = recorder.server.sockets[0].getsockname()[1]
    yield recorder
    recorder.server.close()
    await recorder.server.wait_closed()


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {"worker": FAST_WORKER, "fetch": {"allow_private_hosts": [TRUSTED_HOST]}}


@pytest.fixture
def resolving_runtime(runtime: Runtime) -> Runtime:
    async def resolve(host: str, port: int, /) -> list[str]:
        table = {
            TRUSTED_HOST: ["127.0.0.1"],
            "intranet.example.com": ["127.0.0.1"],
            "db.internal.example": ["10.1.2.3"],
            "mixed.example.com": ["93.184.216.34", "10.0.0.7"],
        }
        if host in table:
            return table[host]
        raise socket.gaierror(f"{host} does not resolve")

    runtime.resolver = resolve
    return runtime


def _submit_body(urls: list[str]) -> dict[str, object]:
    return {
        "model": "seedream-4",
        "prompt": "a ceramic teapot",
        "resolution": "1K",
        "reference_images": urls,
    }


@pytest.mark.parametrize(
    "url_template",
    [
        "http://127.0.0.1:{port}/ref.png",
        "http://10.0.0.1/ref.png",
        "http://10.255.255.254:{port}/ref.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:{port}/ref.png",
        "http://intranet.example.com:{port}/ref.png",
        "http://db.internal.example/ref.png",
        "http://mixed.example.com/ref.png",
        "http://2130706433:{port}/ref.png",
    ],
)
async def test_private_reference_image_urls_are_refused_at_submit(
    resolving_runtime: Runtime, client: httpx.AsyncClient, listener: Listener, url_template: str
) -> None:
    acct = await account_with_key(resolving_runtime, credits=1000, test_key=True)
    url = url_template.format(port=listener.port)
    response = await client.post("/api/v1/generate", json=_submit_body([url]), headers=acct.headers)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "INVALID_PARAMS"
    assert body["field"] == "reference_images"
    assert body["reason"].startswith("item 0")
    assert listener.paths == [], "no request may reach the private address"
    listing = (await client.get("/api/v1/generations", headers=acct.headers)).json()
    assert listing["data"] == []


async def test_a_public_url_redirecting_to_a_private_address_fails_at_fetch_time_with_a_refund(
    resolving_runtime: Runtime,
    client: httpx.AsyncClient,
    listener: Listener,
    local_registry: ProviderRegistry,
) -> None:
    acct = await account_with_key(resolving_runtime, credits=1000)
    worker = Worker(resolving_runtime, concurrency=1, registry=local_registry)
    await worker.start()
    try:
        # A real key: seedream-4 has no configured provider, so render it with a test key
        # instead - the fetch happens before any route, for every key.
        test = await account_with_key(resolving_runtime, credits=1000, test_key=True)
        url = f"http://{TRUSTED_HOST}:{listener.port}/redirect.png"
        response = await client.post(
            "/api/v1/generate", json=_submit_body([url]), headers=test.headers
        )
        assert response.status_code == 201, response.text
        body = await wait_for_status(client, response.json()["generation_id"], test.headers)
    finally:
        await worker.stop(grace_s=0)
    assert body["status"] == "failed"
    assert body["error"] == "INVALID_REFERENCE_IMAGE"
    assert "redirect" in body["message"]
    assert "127.0.0.1" in body["message"]
    assert body["credits_used"] == 0
    assert listener.paths == ["/redirect.png"], "the redirect target was never requested"
    assert (await client.get("/api/v1/credits", headers=acct.headers)).json()["held"] == 0
    await assert_ledger_consistent(resolving_runtime)


async def test_a_reachable_trusted_reference_image_is_fetched_and_the_generation_completes(
    resolving_runtime: Runtime,
    client: httpx.AsyncClient,
    listener: Listener,
    local_registry: ProviderRegistry,
) -> None:
    test = await account_with_key(resolving_runtime, credits=1000, test_key=True)
    worker = Worker(resolving_runtime, concurrency=1, registry=local_registry)
    await worker.start()
    try:
        url = f"http://{TRUSTED_HOST}:{listener.port}/ref.png"
        response = await client.post(
            "/api/v1/generate", json=_submit_body([url]), headers=test.headers
        )
        assert response.status_code == 201, response.text
        body = await wait_for_status(client, response.json()["generation_id"], test.headers)
    finally:
        await worker.stop(grace_s=0)
    assert body["status"] == "completed", body
    assert listener.paths == ["/ref.png"]
