"""Reference image URLs can't make Vivix reach private addresses (SSRF).

Real listeners sit on the private side, on 127.0.0.1 and [::1], and count every
connection they accept: each scenario ends with zero. Redirects lead only to these
listeners: were the guard ever broken, the fetch would hit them, never another network. A second server on 127.0.0.2 plays a
public image host; its name is trusted through `fetch.allow_private_hosts` (it really is a
loopback address), so only the host it redirects to is judged. Host names resolve through a
resolver stand-in (the runtime's `resolver`), never through real DNS."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest

from tests.audit import assert_ledger_consistent
from tests.factories import account_with_key
from tests.fakes.fal import FakeFal
from tests.fakes.media import png_bytes
from tests.worker.conftest import FAST_WORKER
from tests.worker.helpers import wait_for_status
from vivix.providers.fal.adapter import FalAdapter
from vivix.providers.registry import ProviderRegistry
from vivix.runtime import Runtime
from vivix.settings import ProviderSettings
from vivix.worker.runner import Worker

PUBLIC_HOST = "images.example.com"  # stands in for a public image host; really 127.0.0.2
PUBLIC_ADDRESS = "127.0.0.2"
CREDITS = 1000


@dataclass
class RecordingServer:
    """Plain HTTP servers that count every connection and record each request path."""

    connections: int = 0
    paths: list[str] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)  # address -> port
    servers: list[asyncio.Server] = field(default_factory=list)

    async def listen(self, address: str) -> None:
        server = await asyncio.start_server(self._handle, address, 0)
        self.servers.append(server)
        self.ports[address] = server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        for server in self.servers:
            server.close()
            await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        request_line = (await reader.readline()).decode("latin-1")
        while (await reader.readline()) not in (b"\r\n", b"\n", b""):
            pass
        target = request_line.split(" ")[1] if request_line.count(" ") >= 2 else "?"
        self.paths.append(urlsplit(target).path)
        writer.write(self.answer(target))
        await writer.drain()
        writer.close()

    def answer(self, target: str) -> bytes:
        body = b"internal secret"
        return _response("200 OK", {"Content-Type": "text/plain"}, body)


class PublicImageHost(RecordingServer):
    """`/ref.png` is an image; `/redirect?to=URL` answers 302 to URL."""

    def answer(self, target: str) -> bytes:
        parts = urlsplit(target)
        if parts.path == "/ref.png":
            return _response("200 OK", {"Content-Type": "image/png"}, png_bytes(8, 8, 1))
        if parts.path == "/redirect":
            location = parse_qs(parts.query)["to"][0]
            return _response("302 Found", {"Location": location}, b"")
        return _response("404 Not Found", {}, b"")


def _response(status: str, headers: dict[str, str], body: bytes) -> bytes:
    head = f"HTTP/1.1 {status}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (head + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


@pytest.fixture
async def private() -> AsyncIterator[RecordingServer]:
    """The private side: listeners on 127.0.0.1 and [::1] that must never be reached."""
    listener = RecordingServer()
    await listener.listen("127.0.0.1")
    await listener.listen("::1")
    yield listener
    await listener.close()


@pytest.fixture
async def public() -> AsyncIterator[PublicImageHost]:
    host = PublicImageHost()
    await host.listen(PUBLIC_ADDRESS)
    yield host
    await host.close()


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {
        "worker": FAST_WORKER,
        "fetch": {"allow_private_hosts": [PUBLIC_HOST]},
        "providers": {"fal": {"api_key": "fal-test-key"}},
    }


@pytest.fixture
def resolving_runtime(runtime: Runtime) -> Runtime:
    table = {
        PUBLIC_HOST: [PUBLIC_ADDRESS],
        "intranet.example.com": ["127.0.0.1"],
        "intranet6.example.com": ["::1"],
        "db.internal.example": ["10.1.2.3"],
        "mixed.example.com": ["93.184.216.34", "10.0.0.7"],
    }

    async def resolve(host: str, port: int, /) -> list[str]:
        if host in table:
            return table[host]
        raise socket.gaierror(f"{host} does not resolve")

    runtime.resolver = resolve
    return runtime


@pytest.fixture
async def fal_worker(resolving_runtime: Runtime, tmp_path: Path) -> AsyncIterator[FakeFal]:
    """A worker whose fal route reaches the fal fake; yields the fake."""
    fal = FakeFal(outputs=1, polls_before_done=1)
    registry = ProviderRegistry(
        {
            "fal": FalAdapter.standalone(
                ProviderSettings(
                    api_key="fal-test-key", base_url="http://fal.test", retry_backoff_seconds=0.01
                ),
                transport=httpx.ASGITransport(app=fal.app),
            )
        }
    )
    worker = Worker(resolving_runtime, concurrency=1, registry=registry)
    await worker.start()
    try:
        yield fal
    finally:
        await worker.stop(grace_s=0)
        await registry.aclose()


def _submit_body(urls: list[str]) -> dict[str, object]:
    return {
        "model": "seedream-4",
        "prompt": "a ceramic teapot",
        "resolution": "1K",
        "reference_images": urls,
    }


async def _wallet(client: httpx.AsyncClient, headers: dict[str, str]) -> tuple[int, int]:
    credits = (await client.get("/api/v1/credits", headers=headers)).json()
    return credits["balance"], credits["held"]


@pytest.mark.parametrize(
    "url_template",
    [
        "http://127.0.0.1:{v4}/ref.png",
        "http://[::1]:{v6}/ref.png",
        "http://10.0.0.1/ref.png",
        "http://10.255.255.254:{v4}/ref.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://intranet.example.com:{v4}/ref.png",
        "http://intranet6.example.com:{v6}/ref.png",
        "http://db.internal.example/ref.png",
        "http://mixed.example.com/ref.png",
        "http://2130706433:{v4}/ref.png",
        "http://[::ffff:127.0.0.1]:{v4}/ref.png",
    ],
)
async def test_private_reference_image_urls_are_refused_at_submit(
    resolving_runtime: Runtime,
    client: httpx.AsyncClient,
    private: RecordingServer,
    url_template: str,
) -> None:
    acct = await account_with_key(resolving_runtime, credits=CREDITS)
    url = url_template.format(v4=private.ports["127.0.0.1"], v6=private.ports["::1"])
    public_url = f"http://{PUBLIC_HOST}/ref.png"

    response = await client.post(
        "/api/v1/generate", json=_submit_body([public_url, url]), headers=acct.headers
    )

    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "INVALID_PARAMS"
    assert body["field"] == "reference_images"
    assert body["reason"].startswith("item 1 ")
    assert private.connections == 0, "no connection may reach the private address"
    listing = (await client.get("/api/v1/generations", headers=acct.headers)).json()
    assert listing["data"] == [], "a refused submit leaves no generation"
    assert await _wallet(client, acct.headers) == (CREDITS, 0), "and holds nothing"


@pytest.mark.parametrize(
    ("target_template", "named"),
    [
        ("http://127.0.0.1:{v4}/secret", "127.0.0.1"),
        ("http://[::1]:{v6}/secret", "::1"),
        ("http://intranet.example.com:{v4}/secret", "intranet.example.com"),
        ("http://intranet6.example.com:{v6}/secret", "intranet6.example.com"),
        ("http://2130706433:{v4}/secret", "2130706433"),
    ],
)
async def test_a_public_url_redirecting_to_a_private_address_fails_at_fetch_time_with_a_refund(
    resolving_runtime: Runtime,
    client: httpx.AsyncClient,
    private: RecordingServer,
    public: PublicImageHost,
    fal_worker: FakeFal,
    target_template: str,
    named: str,
) -> None:
    acct = await account_with_key(resolving_runtime, credits=CREDITS)
    target = target_template.format(v4=private.ports["127.0.0.1"], v6=private.ports["::1"])
    url = f"http://{PUBLIC_HOST}:{public.ports[PUBLIC_ADDRESS]}/redirect?to={quote(target)}"

    response = await client.post("/api/v1/generate", json=_submit_body([url]), headers=acct.headers)
    assert response.status_code == 201, response.text
    held = response.json()["credits_estimate"]
    assert held > 0
    body = await wait_for_status(client, response.json()["generation_id"], acct.headers)

    assert body["status"] == "failed"
    assert body["error"] == "INVALID_REFERENCE_IMAGE"
    assert "redirect" in body["message"]
    assert named in body["message"]
    assert body["credits_used"] == 0
    assert await _wallet(client, acct.headers) == (CREDITS, 0), "the hold was refunded"
    assert public.paths == ["/redirect"]
    assert private.connections == 0, "the redirect target was never connected to"
    assert fal_worker.submissions == 0, "no provider was paid for a refused reference"
    await assert_ledger_consistent(resolving_runtime)


async def test_a_reachable_public_reference_image_is_fetched_and_the_generation_completes(
    resolving_runtime: Runtime,
    client: httpx.AsyncClient,
    private: RecordingServer,
    public: PublicImageHost,
    fal_worker: FakeFal,
) -> None:
    acct = await account_with_key(resolving_runtime, credits=CREDITS)
    url = f"http://{PUBLIC_HOST}:{public.ports[PUBLIC_ADDRESS]}/ref.png"

    response = await client.post("/api/v1/generate", json=_submit_body([url]), headers=acct.headers)
    assert response.status_code == 201, response.text
    body = await wait_for_status(client, response.json()["generation_id"], acct.headers)

    assert body["status"] == "completed", body
    assert public.paths == ["/ref.png"], "fetched once, through the guarded client"
    assert fal_worker.received[0]["image_urls"] == [url], "fal gets the checked URL"
    assert private.connections == 0
    await assert_ledger_consistent(resolving_runtime)
