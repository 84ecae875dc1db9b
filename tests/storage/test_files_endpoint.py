"""`/files/{key}` over real stores (a local directory and memory), mounted on a minimal app
with the same error rendering as the real one."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Scope

from vivix.kit.errors import VivixError
from vivix.kit.http import json_response
from vivix.storage.endpoints import router
from vivix.storage.service import OutputStore

BASE_URL = "http://testserver"
GENERATION_ID = "0196b8a2-4f1c-7a3e-8d2b-5c6f7a8b9c0d"
DATA = bytes(range(256)) * 40  # 10 KiB
SIZE = len(DATA)


def files_app(store: OutputStore) -> FastAPI:
    app = FastAPI()
    app.include_router(router)
    app.state.runtime = SimpleNamespace(storage=store)

    @app.exception_handler(VivixError)
    async def render_error(request: Request, exc: VivixError) -> Response:
        return json_response(exc.body("req_test"), exc.status, exc.headers)

    return app


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> OutputStore:
    url = (tmp_path / "outputs").as_uri() if request.param == "local" else "memory://"
    return OutputStore.from_url(url, public_base_url=BASE_URL)


@pytest.fixture
async def client(store: OutputStore) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=files_app(store))
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as http:
        yield http


@pytest.fixture
async def image_url(store: OutputStore) -> str:
    return await store.put(OutputStore.new_key(GENERATION_ID, 0, "png"), DATA, "image/png")


def assert_file_headers(response: httpx.Response, content_type: str, length: int) -> None:
    assert response.headers["content-type"] == content_type
    assert response.headers["content-length"] == str(length)
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert response.headers["x-content-type-options"] == "nosniff"
    etag = response.headers["etag"]
    assert etag.startswith('"')
    assert etag.endswith('"')
    assert len(etag) > 8


async def test_get_serves_the_whole_file(client: httpx.AsyncClient, image_url: str) -> None:
    response = await client.get(image_url)

    assert response.status_code == 200
    assert response.content == DATA
    assert_file_headers(response, "image/png", SIZE)
    assert "content-range" not in response.headers


async def test_the_etag_is_stable_and_differs_per_file(
    client: httpx.AsyncClient, store: OutputStore, image_url: str
) -> None:
    other_url = await store.put(OutputStore.new_key(GENERATION_ID, 1, "png"), DATA, "image/png")

    first = (await client.get(image_url)).headers["etag"]
    again = (await client.head(image_url)).headers["etag"]
    other = (await client.get(other_url)).headers["etag"]

    assert first == again
    assert first != other


@pytest.mark.parametrize(
    ("range_header", "start", "end"),
    [
        ("bytes=0-9", 0, 10),
        ("bytes=0-0", 0, 1),
        ("bytes=100-355", 100, 356),
        ("bytes=10000-", 10000, SIZE),
        ("bytes=-5", SIZE - 5, SIZE),
        ("bytes=-99999", 0, SIZE),
        ("bytes=5000-999999", 5000, SIZE),
        (f"bytes={SIZE - 1}-{SIZE - 1}", SIZE - 1, SIZE),
        (" Bytes=0-9 ", 0, 10),
    ],
)
async def test_a_single_range_gets_206_and_the_exact_slice(
    client: httpx.AsyncClient, image_url: str, range_header: str, start: int, end: int
) -> None:
    response = await client.get(image_url, headers={"Range": range_header})

    assert response.status_code == 206
    assert response.content == DATA[start:end]
    assert response.headers["content-range"] == f"bytes {start}-{end - 1}/{SIZE}"
    assert_file_headers(response, "image/png", end - start)


@pytest.mark.parametrize(
    "range_header", [f"bytes={SIZE}-", f"bytes={SIZE + 10}-{SIZE + 20}", "bytes=-0"]
)
async def test_a_range_outside_the_file_is_416(
    client: httpx.AsyncClient, image_url: str, range_header: str
) -> None:
    response = await client.get(image_url, headers={"Range": range_header})

    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{SIZE}"
    body = response.json()
    assert body["error"] == "RANGE_NOT_SATISFIABLE"
    assert body["request_id"] == "req_test"


@pytest.mark.parametrize(
    "range_header",
    ["bytes=0-1,4-5", "bytes=5-2", "bytes=abc", "bytes=-", "items=0-9", "bytes 0-9", "0-9", ""],
)
async def test_a_malformed_or_multi_range_is_ignored(
    client: httpx.AsyncClient, image_url: str, range_header: str
) -> None:
    response = await client.get(image_url, headers={"Range": range_header})

    assert response.status_code == 200
    assert response.content == DATA
    assert_file_headers(response, "image/png", SIZE)


async def test_if_range_applies_the_range_only_for_the_current_etag(
    client: httpx.AsyncClient, image_url: str
) -> None:
    etag = (await client.head(image_url)).headers["etag"]

    matching = await client.get(image_url, headers={"Range": "bytes=0-9", "If-Range": etag})
    stale = await client.get(image_url, headers={"Range": "bytes=0-9", "If-Range": '"stale"'})
    dated = await client.get(
        image_url, headers={"Range": "bytes=0-9", "If-Range": "Wed, 21 Oct 2015 07:28:00 GMT"}
    )

    assert (matching.status_code, matching.content) == (206, DATA[:10])
    assert (stale.status_code, stale.content) == (200, DATA)
    assert (dated.status_code, dated.content) == (200, DATA)


@pytest.mark.parametrize("header", ["{etag}", "W/{etag}", '"other", {etag}', "*"])
async def test_if_none_match_with_the_etag_is_304(
    client: httpx.AsyncClient, image_url: str, header: str
) -> None:
    etag = (await client.head(image_url)).headers["etag"]

    response = await client.get(image_url, headers={"If-None-Match": header.format(etag=etag)})

    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["etag"] == etag


async def test_if_none_match_with_another_etag_serves_the_file(
    client: httpx.AsyncClient, image_url: str
) -> None:
    response = await client.get(image_url, headers={"If-None-Match": '"other"'})

    assert response.status_code == 200
    assert response.content == DATA


async def test_head_sends_the_headers_without_a_body(
    client: httpx.AsyncClient, image_url: str
) -> None:
    response = await client.head(image_url)
    ranged = await client.head(image_url, headers={"Range": "bytes=-100"})

    assert response.status_code == 200
    assert response.content == b""
    assert_file_headers(response, "image/png", SIZE)
    assert ranged.status_code == 206
    assert ranged.content == b""
    assert ranged.headers["content-range"] == f"bytes {SIZE - 100}-{SIZE - 1}/{SIZE}"
    assert_file_headers(ranged, "image/png", 100)


@pytest.mark.parametrize(
    "path",
    [
        f"/files/{GENERATION_ID}/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA/0.png",
        f"/files/{GENERATION_ID}",
        "/files/a/%2E%2E/%2E%2E/etc/passwd",
        "/files/%2Fetc/passwd",
        "/files/a%20b.png",
        "/files/a//b.png",
    ],
)
@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_a_missing_or_malformed_key_is_a_404_json_error(
    client: httpx.AsyncClient, image_url: str, path: str, method: str
) -> None:
    response = await client.request(method, path)

    assert response.status_code == 404
    if method == "GET":
        body = response.json()
        assert body["error"] == "NOT_FOUND"
        assert body["message"] == "No such file."
        assert body["request_id"] == "req_test"
        assert body["next"]


async def test_a_deleted_file_is_gone(
    client: httpx.AsyncClient, store: OutputStore, image_url: str
) -> None:
    await store.delete(image_url.removeprefix(f"{BASE_URL}/files/"))

    assert (await client.get(image_url)).status_code == 404


async def test_content_type_follows_the_stored_file(
    client: httpx.AsyncClient, store: OutputStore
) -> None:
    audio_url = await store.put(OutputStore.new_key(GENERATION_ID, 0, "mp3"), DATA, "audio/mpeg")

    response = await client.get(audio_url)

    assert response.headers["content-type"] == "audio/mpeg"


async def send_through_asgi(
    app: FastAPI, path: str, headers: list[tuple[bytes, bytes]]
) -> tuple[Message, list[bytes]]:
    """Calls the app directly to see each body message (httpx's transport joins them)."""
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 12345),
        "server": ("testserver", 80),
    }
    start: Message = {}
    bodies: list[bytes] = []
    requests: list[Message] = [{"type": "http.request", "body": b"", "more_body": False}]
    # The client stays connected: StreamingResponse watches receive() for a disconnect.
    never_disconnects = asyncio.Event()

    async def receive() -> Message:
        if requests:
            return requests.pop()
        await never_disconnects.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
        elif message["type"] == "http.response.body":
            bodies.append(message.get("body", b""))

    await app(scope, receive, send)
    return start, bodies


async def test_a_video_sized_file_streams_in_chunks(tmp_path: Path) -> None:
    store = OutputStore.from_url((tmp_path / "outputs").as_uri(), public_base_url=BASE_URL)
    video = os.urandom(5 * 1024 * 1024 + 321)
    key = OutputStore.new_key(GENERATION_ID, 0, "mp4")
    await store.put(key, video, "video/mp4")
    app = files_app(store)

    start, bodies = await send_through_asgi(app, f"/files/{key}", [])
    ranged_start, ranged_bodies = await send_through_asgi(
        app, f"/files/{key}", [(b"range", b"bytes=1000000-")]
    )

    headers = dict(start["headers"])
    assert start["status"] == 200
    assert headers[b"content-type"] == b"video/mp4"
    assert headers[b"content-length"] == str(len(video)).encode()
    assert b"".join(bodies) == video
    # Streamed in pieces of about the store's chunk size, never as one buffer.
    assert len(bodies) > 10
    assert max(len(body) for body in bodies) <= 1024 * 1024
    assert ranged_start["status"] == 206
    assert b"".join(ranged_bodies) == video[1000000:]
    assert dict(ranged_start["headers"])[b"content-range"] == (
        f"bytes 1000000-{len(video) - 1}/{len(video)}".encode()
    )


SANDBOX = "sandbox"


@pytest.mark.parametrize(
    ("extension", "content_type"),
    [
        ("png", "image/png"),
        ("jpg", "image/jpeg"),
        ("webp", "image/webp"),
        ("mp4", "video/mp4"),
        ("webm", "video/webm"),
        ("mp3", "audio/mpeg"),
        ("wav", "audio/wav"),
    ],
)
async def test_media_is_served_inline_in_a_sandbox(
    client: httpx.AsyncClient, store: OutputStore, extension: str, content_type: str
) -> None:
    url = await store.put(OutputStore.new_key(GENERATION_ID, 2, extension), DATA, content_type)
    for method in ("GET", "HEAD"):
        response = await client.request(method, url)
        assert response.status_code == 200
        assert response.headers["content-type"] == content_type
        assert response.headers["content-disposition"] == f'inline; filename="2.{extension}"'
        csp = response.headers["content-security-policy"]
        assert SANDBOX in csp.split("; ")
        assert "default-src 'none'" in csp
        assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    ("extension", "content_type"),
    [
        ("html", "text/html"),
        ("svg", "image/svg+xml"),
        ("js", "application/javascript"),
        ("bin", "text/html; charset=utf-8"),
        ("xml", "application/xhtml+xml"),
        ("png", "text/html"),  # a bucket object whose stored type says HTML
    ],
)
async def test_types_a_browser_executes_are_never_served_as_themselves(
    client: httpx.AsyncClient, store: OutputStore, extension: str, content_type: str
) -> None:
    """Nothing stored by today's worker is like this (it keeps only sniffed media), but an
    object written by an older version or straight into the bucket may be."""
    key = OutputStore.new_key(GENERATION_ID, 0, extension)
    url = await store.put(key, b"<script>alert(document.cookie)</script>", content_type)
    response = await client.get(url)
    assert response.status_code == 200
    served = response.headers["content-type"]
    assert served in ("application/octet-stream", "image/png"), served
    if served == "application/octet-stream":
        assert response.headers["content-disposition"].startswith("attachment;")
    assert SANDBOX in response.headers["content-security-policy"].split("; ")
    assert response.headers["x-content-type-options"] == "nosniff"
