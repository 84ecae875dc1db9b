"""`/files/{key}`: serves rendered outputs from the output store.

Public on purpose: output URLs carry an unguessable key, so holding the URL is the access
right (a capability URL). Supports single byte ranges (video seeking) and conditional
requests; bodies are streamed, never loaded whole.

Our origin never serves a type a browser executes: only the image, video and audio types
we store are sent as themselves (inline), anything else (HTML, SVG, script — from an older
version or written straight into the bucket) as an `application/octet-stream` download.
Every answer carries a sandboxing Content-Security-Policy, so even a file opened directly
can't run script with our origin's rights."""

from __future__ import annotations

import hashlib
import re

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from vivix.kit.errors import NotFound, VivixError
from vivix.storage.service import (
    CONTENT_TYPES,
    DEFAULT_CONTENT_TYPE,
    IMMUTABLE_CACHE_CONTROL,
    OutputStore,
)

router = APIRouter(tags=["files"])

_SINGLE_BYTE_RANGE = re.compile(r"bytes=(\d*)-(\d*)", re.IGNORECASE)
# Types served as themselves: the media types outputs are stored with.
_SERVED_AS_IS = frozenset(CONTENT_TYPES.values()) | {"audio/x-wav"}
# GitHub's raw-file policy: nothing loads, nothing runs, an opaque origin.
SANDBOX_POLICY = "default-src 'none'; style-src 'unsafe-inline'; sandbox"


class RangeNotSatisfiable(VivixError):
    status = 416
    code = "RANGE_NOT_SATISFIABLE"
    default_message = "The requested byte range starts past the end of the file."
    default_next = "Request a range within the size given in Content-Range, or omit Range."


@router.api_route("/files/{key:path}", methods=["GET", "HEAD"], summary="A rendered output file")
async def get_file(key: str, request: Request) -> Response:
    store: OutputStore = request.app.state.runtime.storage
    stored = await store.head(key)
    if stored is None:
        raise NotFound(
            "No such file.",
            next="Use the output URLs returned by GET /api/v1/generations/{id}.",
        )
    etag = _etag(key, stored.size)
    headers = {
        "Accept-Ranges": "bytes",
        "ETag": etag,
        "Cache-Control": IMMUTABLE_CACHE_CONTROL,
        # Outputs come from third parties: never let a browser sniff them into HTML.
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": SANDBOX_POLICY,
    }
    content_type = stored.content_type.split(";", 1)[0].strip().lower()
    filename = key.rsplit("/", 1)[-1]
    if content_type in _SERVED_AS_IS:
        headers["Content-Disposition"] = f'inline; filename="{filename}"'
    else:
        content_type = DEFAULT_CONTENT_TYPE
        headers["Content-Disposition"] = f'attachment; filename="{filename}"'

    if _matches_any(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)

    status = 200
    start, end = 0, stored.size
    if_range = request.headers.get("if-range")
    # If-Range: a range of a different version must not be spliced in; we send no
    # Last-Modified, so only our own strong ETag validates it.
    if if_range is None or if_range.strip() == etag:
        requested = _byte_range(request.headers.get("range"), stored.size)
        if requested is not None:
            status = 206
            start, end = requested
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{stored.size}"
    headers["Content-Type"] = content_type
    headers["Content-Length"] = str(end - start)
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers)
    return StreamingResponse(store.stream(key, start, end), status_code=status, headers=headers)


def _etag(key: str, size: int) -> str:
    # Strong and stable across replicas and backends: a key is written once, so key and
    # size identify the bytes.
    return f'"{hashlib.sha256(key.encode()).hexdigest()[:32]}-{size:x}"'


def _matches_any(if_none_match: str | None, etag: str) -> bool:
    if if_none_match is None:
        return False
    candidates = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in candidates or etag in candidates


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """[start, end) of a single `bytes=` range, or None to send the whole file (no header,
    or one that is malformed or multi-range: RFC 9110 lets a server ignore those). Raises
    RangeNotSatisfiable when the range lies outside the file."""
    if header is None:
        return None
    match = _SINGLE_BYTE_RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first:
        if not last:
            return None
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise _unsatisfiable(size)
        return max(0, size - suffix), size
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise _unsatisfiable(size)
    end = min(int(last) + 1, size) if last else size
    return start, end


def _unsatisfiable(size: int) -> RangeNotSatisfiable:
    return RangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})
