"""The output store: where rendered files are written (by the worker) and read from (by the
`/files` endpoint), over obstore."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import obstore
from obstore.store import LocalStore, MemoryStore, ObjectStore, S3Store

from vivix.kit.ids import base62

# Keys are write-once (new_key is random), so any copy of a file may be cached forever.
IMMUTABLE_CACHE_CONTROL = "public, max-age=31536000, immutable"

CONTENT_TYPES: dict[str, str] = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "avif": "image/avif",
    "mp4": "video/mp4",
    "webm": "video/webm",
    "mov": "video/quicktime",
    "mp3": "audio/mpeg",
    "wav": "audio/wav",
    "m4a": "audio/mp4",
    "aac": "audio/aac",
    "ogg": "audio/ogg",
    "opus": "audio/ogg",
    "flac": "audio/flac",
    "weba": "audio/webm",
    "mkv": "video/x-matroska",
    "mka": "audio/x-matroska",
    "ogv": "video/ogg",
}
DEFAULT_CONTENT_TYPE = "application/octet-stream"
# The first extension listed for a type is the one we name files with.
_EXTENSION_FOR_TYPE = {t: ext for ext, t in reversed(CONTENT_TYPES.items())} | {
    "audio/x-wav": "wav"
}


def extension_for(content_type: str) -> str:
    return _EXTENSION_FOR_TYPE.get(content_type.split(";", 1)[0].strip().lower(), "bin")


_KEY = re.compile(r"[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*")
_EXTENSION = re.compile(r"[a-z0-9]{1,16}")
_MAX_KEY_LENGTH = 1024
_KEY_TOKEN_LENGTH = 32


def is_valid_key(key: str) -> bool:
    """Only plain relative paths: no "..", no leading or doubled "/", a safe charset (which
    also makes keys URL-safe without quoting)."""
    return (
        len(key) <= _MAX_KEY_LENGTH
        and _KEY.fullmatch(key) is not None
        and ".." not in key
        and "." not in key.split("/")
    )


def content_type_for(key: str) -> str:
    _, dot, extension = key.rpartition(".")
    if not dot or "/" in extension:
        return DEFAULT_CONTENT_TYPE
    return CONTENT_TYPES.get(extension.lower(), DEFAULT_CONTENT_TYPE)


def _require_valid_key(key: str) -> None:
    if not is_valid_key(key):
        raise ValueError(f"invalid output key {key!r}")


def _http_base(url: str, name: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{name} must start with http:// or https://, got {url!r}")
    return url.rstrip("/")


@dataclass(frozen=True, slots=True)
class StoredObject:
    size: int
    content_type: str


class OutputStore:
    """Rendered outputs over obstore: a local directory (default file://<data dir>/outputs),
    memory (memory://), or an S3-compatible bucket (s3://bucket/prefix; credentials and
    endpoint from the usual AWS_* environment variables, e.g. AWS_ENDPOINT_URL,
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ALLOW_HTTP for a local http
    endpoint).

    Objects are write-once under unguessable keys (`new_key`); their URLs are capability
    URLs. `get_range` and `stream` raise FileNotFoundError for a missing key; every method
    but `head` raises ValueError for a malformed key (`head` answers None: not found).
    """

    def __init__(
        self,
        store: ObjectStore,
        *,
        public_base_url: str,
        storage_public_url: str | None = None,
    ) -> None:
        self._store = store
        # The local filesystem backend can't keep attributes: there the content type comes
        # from the key's extension instead.
        self._keeps_attributes = not isinstance(store, LocalStore)
        self._files_base = _http_base(public_base_url, "public_base_url") + "/files"
        self._public_base = (
            _http_base(storage_public_url, "storage_public_url")
            if storage_public_url
            else self._files_base
        )

    @classmethod
    def from_url(
        cls,
        storage_url: str,
        *,
        public_base_url: str,
        storage_public_url: str | None = None,
    ) -> OutputStore:
        scheme = urlsplit(storage_url).scheme.lower()
        store: ObjectStore
        if scheme == "file":
            # automatic_cleanup removes the per-output directories emptied by delete.
            store = LocalStore.from_url(storage_url, mkdir=True, automatic_cleanup=True)
        elif scheme == "memory":
            store = MemoryStore()
        elif scheme in ("s3", "s3a"):
            # Everything but bucket and prefix comes from the AWS_* environment. Passing
            # client_options here would replace the ones read from it (AWS_ALLOW_HTTP...).
            store = S3Store.from_url(storage_url)
        else:
            raise ValueError(
                f"unsupported storage URL {storage_url!r}: use file://, memory:// or s3://"
            )
        return cls(store, public_base_url=public_base_url, storage_public_url=storage_public_url)

    @staticmethod
    def new_key(generation_id: str, index: int, extension: str) -> str:
        """`<generation_id>/<32 random base62 chars>/<index>.<extension>`: the random part
        (~190 bits) is what makes the output URL unguessable."""
        if not _EXTENSION.fullmatch(extension):
            raise ValueError(f"extension must be lowercase letters/digits, no dot: {extension!r}")
        if index < 0:
            raise ValueError(f"index must be >= 0, got {index}")
        key = f"{generation_id}/{base62(_KEY_TOKEN_LENGTH)}/{index}.{extension}"
        _require_valid_key(key)
        return key

    def url_for(self, key: str) -> str:
        _require_valid_key(key)
        return f"{self._public_base}/{key}"

    async def put(self, key: str, data: bytes, content_type: str) -> str:
        """Stores `data` under `key` and returns its public URL. On the local filesystem
        `content_type` is not kept: the key's extension decides it when read back."""
        _require_valid_key(key)
        if self._keeps_attributes:
            # Cache-Control matters when the bucket or a CDN serves the file directly.
            attributes = {"Content-Type": content_type, "Cache-Control": IMMUTABLE_CACHE_CONTROL}
            await obstore.put_async(self._store, key, data, attributes=attributes)
        else:
            await obstore.put_async(self._store, key, data)
        return self.url_for(key)

    async def head(self, key: str) -> StoredObject | None:
        if not is_valid_key(key):
            return None
        try:
            # A HEAD through `get` (not `head_async`), because only `get` returns attributes.
            result = await obstore.get_async(self._store, key, options={"head": True})
        except FileNotFoundError:
            return None
        content_type = result.attributes.get("Content-Type") or content_type_for(key)
        return StoredObject(size=result.meta["size"], content_type=content_type)

    async def get_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes [start, end); shorter if the object ends first."""
        _require_valid_key(key)
        _check_range(start, end)
        if start == end:
            return b""
        data = await obstore.get_range_async(self._store, key, start=start, end=end)
        return bytes(data)

    async def stream(
        self, key: str, start: int, end: int, chunk_size: int = 256 * 1024
    ) -> AsyncIterator[bytes]:
        """Bytes [start, end) in chunks of about `chunk_size` (the backend may hand over
        larger ones), without holding the whole object in memory."""
        _require_valid_key(key)
        _check_range(start, end)
        if start == end:
            return
        result = await obstore.get_async(self._store, key, options={"range": (start, end)})
        async for chunk in result.stream(min_chunk_size=chunk_size):
            yield chunk

    async def check_writable(self) -> None:
        """Write, read back and delete a small probe object; raises when any step fails."""
        key = f"_readiness/{base62(16)}.txt"
        probe = b"vivix readiness probe"
        await obstore.put_async(self._store, key, probe)
        try:
            if (
                bytes(await obstore.get_range_async(self._store, key, start=0, end=len(probe)))
                != probe
            ):
                raise OSError("the probe object read back differently")
        finally:
            await self.delete(key)

    async def delete(self, key: str) -> None:
        """Idempotent: deleting a missing key is not an error on any backend."""
        _require_valid_key(key)
        with contextlib.suppress(FileNotFoundError):
            await obstore.delete_async(self._store, key)


def _check_range(start: int, end: int) -> None:
    if not 0 <= start <= end:
        raise ValueError(f"invalid byte range [{start}, {end})")
