"""The output store on real backends: a local directory, memory, and an S3 bucket served by
moto's S3-compatible server on 127.0.0.1."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer
from obstore.store import S3Store

from vivix.storage.service import OutputStore, StoredObject

BUCKET = "vivix-outputs"
REGION = "us-east-1"
ACCESS_KEY_ID = "test-access-key"
SECRET_ACCESS_KEY = "test-secret-key"
PUBLIC_URL = "http://vivix.test"
GENERATION_ID = "0196b8a2-4f1c-7a3e-8d2b-5c6f7a8b9c0d"
DATA = bytes(range(256)) * 40  # 10 KiB, every byte distinct within 256

KEY_SHAPE = re.compile(re.escape(GENERATION_ID) + r"/[0-9A-Za-z]{32}/\d+\.[a-z0-9]+")


def s3_client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
        region_name=REGION,
    )


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    s3_client(endpoint).create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()


def s3_store(endpoint: str, **kwargs: Any) -> OutputStore:
    # A fresh prefix per store keeps tests apart in the one bucket.
    bucket = S3Store(
        BUCKET,
        prefix=f"test-{uuid.uuid4().hex[:12]}",
        endpoint=endpoint,
        access_key_id=ACCESS_KEY_ID,
        secret_access_key=SECRET_ACCESS_KEY,
        region=REGION,
        client_options={"allow_http": True},
    )
    return OutputStore(bucket, public_base_url=PUBLIC_URL, **kwargs)


@pytest.fixture(params=["local", "memory", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> OutputStore:
    if request.param == "local":
        return OutputStore.from_url((tmp_path / "outputs").as_uri(), public_base_url=PUBLIC_URL)
    if request.param == "memory":
        return OutputStore.from_url("memory://", public_base_url=PUBLIC_URL)
    return s3_store(request.getfixturevalue("s3_endpoint"))


def new_key(extension: str = "png", index: int = 0) -> str:
    return OutputStore.new_key(GENERATION_ID, index, extension)


async def collect(store: OutputStore, key: str, start: int, end: int, chunk_size: int) -> bytes:
    return b"".join([chunk async for chunk in store.stream(key, start, end, chunk_size)])


# --- every backend -------------------------------------------------------------------


async def test_put_then_read_back_whole_and_in_slices(store: OutputStore) -> None:
    key = new_key("png")
    url = await store.put(key, DATA, "image/png")

    assert url == f"{PUBLIC_URL}/files/{key}"
    assert await store.head(key) == StoredObject(size=len(DATA), content_type="image/png")
    assert await store.get_range(key, 0, len(DATA)) == DATA
    assert await store.get_range(key, 100, 356) == DATA[100:356]
    assert await store.get_range(key, 7, 7) == b""
    assert await collect(store, key, 0, len(DATA), chunk_size=1024) == DATA
    assert await collect(store, key, 1000, 5001, chunk_size=1024) == DATA[1000:5001]


async def test_a_range_past_the_end_returns_the_remainder(store: OutputStore) -> None:
    key = new_key("png")
    await store.put(key, DATA, "image/png")

    assert await store.get_range(key, len(DATA) - 10, len(DATA) + 100) == DATA[-10:]
    assert await collect(store, key, len(DATA) - 3, len(DATA) + 5, 1024) == DATA[-3:]


async def test_delete_removes_the_file_and_is_idempotent(store: OutputStore) -> None:
    key = new_key("mp4")
    await store.put(key, DATA, "video/mp4")

    await store.delete(key)
    await store.delete(key)

    assert await store.head(key) is None


async def test_a_missing_key_is_none_on_head_and_an_error_on_read(store: OutputStore) -> None:
    key = new_key("png")

    assert await store.head(key) is None
    with pytest.raises(FileNotFoundError):
        await store.get_range(key, 0, 10)
    with pytest.raises(FileNotFoundError):
        await collect(store, key, 0, 10, 1024)


async def test_a_generation_directory_is_not_a_file(store: OutputStore) -> None:
    key = new_key("png")
    await store.put(key, DATA, "image/png")

    assert await store.head(GENERATION_ID) is None
    assert await store.head(key.rsplit("/", 1)[0]) is None


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/etc/passwd",
        "../outside.png",
        "a/../../outside.png",
        "a/./b.png",
        "a..b.png",
        "a//b.png",
        "a/",
        "a b.png",
        "a\\b.png",
        "a/b.png?x=1",
        "%2e%2e/b.png",
        "é.png",
        "a" * 1025,
    ],
)
async def test_a_malformed_key_is_never_found_nor_written(store: OutputStore, key: str) -> None:
    assert await store.head(key) is None
    with pytest.raises(ValueError, match="invalid output key"):
        await store.put(key, DATA, "image/png")
    with pytest.raises(ValueError, match="invalid output key"):
        store.url_for(key)
    with pytest.raises(ValueError, match="invalid output key"):
        await store.get_range(key, 0, 1)


# --- keys and URLs -------------------------------------------------------------------


def test_new_keys_are_distinct_and_unguessable_looking() -> None:
    keys = {new_key("png", index=i % 4) for i in range(2000)}

    assert len(keys) == 2000
    for key in keys:
        assert KEY_SHAPE.fullmatch(key), key
    # Uses the whole base62 alphabet, not just hex.
    tokens = "".join(key.split("/")[1] for key in keys)
    assert set(tokens) == set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def test_new_key_keeps_index_and_extension() -> None:
    key = OutputStore.new_key(GENERATION_ID, 3, "mp4")

    assert key.startswith(f"{GENERATION_ID}/")
    assert key.endswith("/3.mp4")


@pytest.mark.parametrize("extension", [".png", "", "p/ng", "PNG", "png..", "x" * 17])
def test_new_key_rejects_a_bad_extension(extension: str) -> None:
    with pytest.raises(ValueError, match="extension"):
        OutputStore.new_key(GENERATION_ID, 0, extension)


def test_new_key_rejects_a_negative_index() -> None:
    with pytest.raises(ValueError, match="index"):
        OutputStore.new_key(GENERATION_ID, -1, "png")


def test_urls_point_at_the_files_endpoint_by_default() -> None:
    store = OutputStore.from_url("memory://", public_base_url="https://api.example.com/")
    key = new_key()

    assert store.url_for(key) == f"https://api.example.com/files/{key}"


def test_urls_use_the_storage_public_url_when_set() -> None:
    store = OutputStore.from_url(
        "memory://",
        public_base_url="https://api.example.com",
        storage_public_url="https://cdn.example.com/outputs/",
    )
    key = new_key()

    assert store.url_for(key) == f"https://cdn.example.com/outputs/{key}"


@pytest.mark.parametrize(
    ("storage_url", "public_base_url", "storage_public_url", "message"),
    [
        ("gs://bucket/outputs", PUBLIC_URL, None, "unsupported storage URL"),
        ("/var/outputs", PUBLIC_URL, None, "unsupported storage URL"),
        ("memory://", "api.example.com", None, "public_base_url"),
        ("memory://", PUBLIC_URL, "cdn.example.com", "storage_public_url"),
    ],
)
def test_from_url_rejects_bad_configuration(
    storage_url: str, public_base_url: str, storage_public_url: str | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        OutputStore.from_url(
            storage_url, public_base_url=public_base_url, storage_public_url=storage_public_url
        )


# --- local directory -----------------------------------------------------------------


async def test_local_store_creates_its_directory(tmp_path: Path) -> None:
    root = tmp_path / "data dir" / "outputs"  # a space: the URL is percent-encoded

    store = OutputStore.from_url(root.as_uri(), public_base_url=PUBLIC_URL)
    key = new_key("webp")
    await store.put(key, DATA, "image/webp")

    assert root.is_dir()
    assert (root / key).read_bytes() == DATA


async def test_local_store_delete_leaves_no_empty_directories(tmp_path: Path) -> None:
    root = tmp_path / "outputs"
    store = OutputStore.from_url(root.as_uri(), public_base_url=PUBLIC_URL)
    key = new_key("png")
    await store.put(key, DATA, "image/png")

    await store.delete(key)

    assert root.is_dir()
    assert list(root.iterdir()) == []


@pytest.mark.parametrize(
    ("extension", "content_type"),
    [
        ("png", "image/png"),
        ("jpg", "image/jpeg"),
        ("jpeg", "image/jpeg"),
        ("webp", "image/webp"),
        ("gif", "image/gif"),
        ("mp4", "video/mp4"),
        ("webm", "video/webm"),
        ("mp3", "audio/mpeg"),
        ("wav", "audio/wav"),
        ("m4a", "audio/mp4"),
        ("bin", "application/octet-stream"),
    ],
)
async def test_local_store_content_type_comes_from_the_extension(
    tmp_path: Path, extension: str, content_type: str
) -> None:
    store = OutputStore.from_url((tmp_path / "o").as_uri(), public_base_url=PUBLIC_URL)
    key = new_key(extension)
    # The filesystem keeps no attributes: whatever was given, the extension decides.
    await store.put(key, DATA, "text/plain")

    stored = await store.head(key)

    assert stored == StoredObject(size=len(DATA), content_type=content_type)


# --- S3 ------------------------------------------------------------------------------


async def test_s3_keeps_the_given_content_type(s3_endpoint: str) -> None:
    store = s3_store(s3_endpoint)
    key = new_key("webm")

    await store.put(key, DATA, "audio/webm")

    assert await store.head(key) == StoredObject(size=len(DATA), content_type="audio/webm")


async def test_s3_video_sized_object_round_trips(s3_endpoint: str) -> None:
    store = s3_store(s3_endpoint)
    key = new_key("mp4")
    video = os.urandom(6 * 1024 * 1024 + 123)  # above the 5 MiB multipart threshold

    await store.put(key, video, "video/mp4")

    assert await store.head(key) == StoredObject(size=len(video), content_type="video/mp4")
    middle = len(video) // 2
    assert await store.get_range(key, middle, middle + 4096) == video[middle : middle + 4096]
    assert await collect(store, key, 0, len(video), chunk_size=512 * 1024) == video


async def test_s3_urls_use_the_storage_public_url_when_set(s3_endpoint: str) -> None:
    store = s3_store(s3_endpoint, storage_public_url="https://cdn.example.com/out")
    key = new_key("png")

    url = await store.put(key, DATA, "image/png")

    assert url == f"https://cdn.example.com/out/{key}"
    assert s3_store(s3_endpoint).url_for(key) == f"{PUBLIC_URL}/files/{key}"


async def test_s3_from_url_reads_the_aws_environment(
    s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_ALLOW_HTTP", "true")
    store = OutputStore.from_url(f"s3://{BUCKET}/env/outputs", public_base_url=PUBLIC_URL)
    key = new_key("jpg")

    url = await store.put(key, DATA, "image/jpeg")

    assert url == f"{PUBLIC_URL}/files/{key}"
    # Seen from outside obstore: under the URL's prefix, with the object's attributes.
    stored = s3_client(s3_endpoint).get_object(Bucket=BUCKET, Key=f"env/outputs/{key}")
    assert stored["Body"].read() == DATA
    assert stored["ContentType"] == "image/jpeg"
    assert stored["CacheControl"] == "public, max-age=31536000, immutable"
    assert await store.head(key) == StoredObject(size=len(DATA), content_type="image/jpeg")
