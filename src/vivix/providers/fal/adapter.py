"""The `fal` provider: renders on fal.ai through its queue API.

Protocol (fal docs, "Queue API" / "Inference API" reference):
- submit  `POST {queue}/{model_id}` with the model's input as the JSON body, header
  `Authorization: Key <FAL_KEY>`; the answer carries `request_id`, `status_url`,
  `response_url` and `cancel_url`.
- status  `GET status_url` → `{"status": "IN_QUEUE" | "IN_PROGRESS" | "COMPLETED", ...}`
  (HTTP 202 while queued or running, 200 when complete; `queue_position` while queued).
- result  `GET response_url` → the model's own status code, headers and body: the output
  JSON on success, or the model's error (e.g. 422 with a `detail` list) on failure.
- cancel  `PUT cancel_url` → 202 `CANCELLATION_REQUESTED`, 400 `ALREADY_COMPLETED`,
  404 `NOT_FOUND`.

Status, result and cancel URLs use only the app id (owner/app, without the endpoint path
of ids like `fal-ai/wan/v2.7/text-to-video`). The docs say to use the URLs the submit
returns rather than building them; we do, but always send them to the configured queue
host (so a proxy or test double in `base_url` sees every call and the key never goes
elsewhere), and rebuild them from the app id only if a stored handle lacks them.

Handle: `{"request_id", "model", "status_url", "response_url", "cancel_url"}`. Polling with
it needs nothing else, so a retried attempt resumes the same upstream request.
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

import httpx
import structlog

from vivix.providers.base import (
    OutputFile,
    Progress,
    ProviderError,
    ProviderFatalError,
    ProviderRejectedError,
    ProviderRetriableError,
    RenderRequest,
    RenderResult,
    UpstreamHandle,
)
from vivix.providers.http import DEFAULT_TIMEOUT, ProviderHttp

log = structlog.get_logger(__name__)

DEFAULT_BASE_URL = "https://queue.fal.run"
# fal-client: ids under these namespaces carry one more segment before owner/app.
APP_NAMESPACES = frozenset({"workflows", "comfy"})

# Our canonical param → fal input field, the usual names across fal's model schemas.
# A route's `options.fields` renames or drops any of them; other params are not sent.
DEFAULT_FIELDS: dict[str, str] = {
    "prompt": "prompt",
    "negative_prompt": "negative_prompt",
    "aspect_ratio": "aspect_ratio",
    "resolution": "resolution",
    "duration": "duration",
    "audio": "generate_audio",
    "seed": "seed",
    "number_results": "num_images",
}
DEFAULT_REFERENCE_FIELD = {"image": "image_urls", "video": "image_url", "audio": "audio_url"}
SIZE_MODES = frozenset({"image_size", "image_size_enum", "width_height"})
# fal's `image_size` presets; 4:5 has none, the closest is 4:3 portrait.
IMAGE_SIZE_PRESETS = {
    "1:1": "square_hd",
    "4:5": "portrait_4_3",
    "9:16": "portrait_16_9",
    "16:9": "landscape_16_9",
}
ASPECT_RATIOS = {"1:1": (1, 1), "4:5": (4, 5), "9:16": (9, 16), "16:9": (16, 9)}
IMAGE_LONG_SIDE = {"1K": 1024, "2K": 2048, "4K": 4096}
VIDEO_SHORT_SIDE = {"720p": 720, "1080p": 1080, "2160p": 2160}
# Where each category's files sit in fal output schemas (images: [File], video: File, ...).
OUTPUT_KEYS = {
    "image": ("images", "image"),
    "video": ("video", "videos"),
    "audio": ("audio", "audio_file", "audio_url", "audios"),
}
CONTENT_MARKERS = (
    "content_policy",
    "content policy",
    "nsfw",
    "flagged",
    "sensitive",
    "safety",
    "moderation",
)
GENERIC_CONTENT_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})


class FalAdapter:
    """fal.ai queue adapter. One instance per process, shared by all jobs.

    `poll_backoff_s` is the first backoff between retried HTTP calls (doubling, jittered);
    a `Retry-After` from fal takes precedence. A submit is retried only when fal provably
    did not accept it (connect error, 429, 503) - never after a read timeout - so a job is
    never paid for twice; `ProviderHttp` implements that rule.
    """

    name = "fal"

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        poll_backoff_s: float = 0.5,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        retries: int = 3,
        max_concurrent_requests: int = 8,
        max_retry_after_s: float = 30.0,
    ) -> None:
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self._http = ProviderHttp(
            self.name,
            self.base_url,
            headers={"Authorization": f"Key {api_key}"},
            timeout=timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout),
            max_concurrent_requests=max_concurrent_requests,
            retries=retries,
            backoff_s=poll_backoff_s,
            max_retry_after_s=max_retry_after_s,
            transport=transport,
        )

    async def submit(self, request: RenderRequest) -> UpstreamHandle:
        model = request.upstream_model.strip("/")
        if not model:
            raise ProviderFatalError("fal route has no upstream model id")
        body = build_input(request)
        response = await self._http.request("POST", f"/{model}", json=body, idempotent=False)
        if not response.is_success:
            raise submit_error(response, model)
        data = _json_object(response)
        request_id = data.get("request_id")
        if not isinstance(request_id, str) or not request_id:
            raise ProviderRetriableError("fal accepted the submit but returned no request_id")
        urls = request_urls(self.base_url, model, request_id)
        for key in urls:
            if isinstance(data.get(key), str):
                urls[key] = self._on_queue_host(data[key])
        return {"request_id": request_id, "model": model, **urls}

    async def poll(self, handle: UpstreamHandle, request: RenderRequest) -> Progress | RenderResult:
        urls = self._urls(handle)
        response = await self._http.request("GET", urls["status_url"])
        if not response.is_success:  # 202 while queued or running, 200 once completed
            raise poll_error(response, "status check")
        status = str(_json_object(response).get("status", ""))
        if status == "IN_QUEUE":
            return Progress(status="queued")
        if status == "IN_PROGRESS":
            return Progress(status="processing")
        if status.upper() in ("CANCELED", "CANCELLED"):
            raise ProviderRejectedError("canceled upstream")
        if status not in ("COMPLETED", "FAILED", "ERROR"):
            return Progress(status="processing")  # undocumented state: keep waiting
        result = await self._http.request("GET", urls["response_url"])
        if not result.is_success:  # the model's own error, status code and all
            raise poll_error(result, "result")
        return RenderResult(await self._download_outputs(_json_object(result), request.category))

    async def cancel(self, handle: UpstreamHandle) -> None:
        try:
            response = await self._http.request("PUT", self._urls(handle)["cancel_url"])
        except ProviderError as exc:
            log.warning("fal_cancel_failed", request_id=handle.get("request_id"), error=exc.message)
            return
        # 202 CANCELLATION_REQUESTED; 400 ALREADY_COMPLETED and 404 NOT_FOUND mean there is
        # nothing left to stop - fine for a best-effort cancel.
        if response.status_code not in (200, 202, 400, 404):
            log.warning(
                "fal_cancel_refused",
                request_id=handle.get("request_id"),
                status=response.status_code,
            )

    async def aclose(self) -> None:
        await self._http.aclose()

    def _urls(self, handle: UpstreamHandle) -> dict[str, str]:
        request_id = handle.get("request_id")
        model = handle.get("model")
        if not isinstance(request_id, str) or not isinstance(model, str):
            raise ProviderRejectedError("fal handle lacks request_id/model")
        urls = request_urls(self.base_url, model, request_id)
        for key in urls:
            if isinstance(handle.get(key), str):
                urls[key] = self._on_queue_host(handle[key])
        return urls

    def _on_queue_host(self, url: str) -> str:
        """The same path on the configured queue host (credentials go only there)."""
        parts = urlsplit(url)
        base = urlsplit(self.base_url)
        if (parts.scheme, parts.netloc) == (base.scheme, base.netloc):
            return url
        path = parts.path
        if base.path and path.startswith(base.path + "/"):
            path = path[len(base.path) :]
        query = f"?{parts.query}" if parts.query else ""
        return f"{self.base_url}{path}{query}"

    async def _download_outputs(self, result: dict[str, Any], category: str) -> list[OutputFile]:
        files = output_files(result, category)
        flags = result.get("has_nsfw_concepts")
        if category == "image" and isinstance(flags, list) and len(flags) == len(files):
            # Image models with a safety checker return blacked-out images flagged here.
            kept = [file for file, flagged in zip(files, flags, strict=True) if not flagged]
            if files and not kept:
                raise ProviderRejectedError(
                    "fal's safety checker flagged every image", content=True
                )
            files = kept
        outputs = []
        for file in files:
            data, content_type = await self._fetch(file.url)
            if content_type in GENERIC_CONTENT_TYPES:
                content_type = file.content_type or _guess_type(file.url)
            outputs.append(
                OutputFile(
                    data,
                    content_type,
                    width=file.width,
                    height=file.height,
                    duration_s=file.duration_s,
                )
            )
        return outputs

    async def _fetch(self, url: str) -> tuple[bytes, str]:
        if url.startswith("data:"):  # fal's `sync_mode` inlines files as data URIs
            return decode_data_uri(url)
        return await self._http.download(url)


@dataclass(frozen=True, slots=True)
class FileRef:
    url: str
    content_type: str | None = None
    width: int | None = None
    height: int | None = None
    duration_s: float | None = None


def app_id(model: str) -> str:
    """`fal-ai/wan/v2.7/text-to-video` → `fal-ai/wan` (what status/result/cancel use)."""
    parts = model.strip("/").split("/")
    keep = 3 if parts[0] in APP_NAMESPACES else 2
    return "/".join(parts[:keep])


def request_urls(base_url: str, model: str, request_id: str) -> dict[str, str]:
    root = f"{base_url.rstrip('/')}/{app_id(model)}/requests/{request_id}"
    return {"status_url": f"{root}/status", "response_url": root, "cancel_url": f"{root}/cancel"}


def build_input(request: RenderRequest) -> dict[str, Any]:
    """The fal input for one render, from our params and the route's options.

    Route options (all optional):
    - `fields`: our param → fal field, overriding `DEFAULT_FIELDS`; `false` or `""` drops
      it. Params with no field (model-specific ones included) are not sent.
    - `values`: per param, our value as a key (5 → "5", true → "true") → the fal value,
      e.g. `values.duration = {"5" = "5s"}`; values not listed pass unchanged.
    - `size`: how aspect ratio and resolution are sent, instead of as they are:
      `image_size` → `image_size: {width, height}`, `image_size_enum` → `image_size:
      "landscape_16_9"`-style presets, `width_height` → top-level `width`/`height`.
    - `reference_images`: `"list"` (the default for images, field `image_urls`) or
      `"first"` (the default for video, field `image_url`).
    - `input`: fixed fal fields merged last (they win), e.g. `enable_safety_checker`.
    """
    options = request.options
    params = request.params
    fields = {**DEFAULT_FIELDS, **_table(options, "fields")}
    values = _table(options, "values")
    body: dict[str, Any] = {}
    consumed: set[str] = set()

    size_mode = options.get("size")
    if size_mode is not None:
        if size_mode not in SIZE_MODES:
            raise ProviderFatalError(
                f"fal route option size={size_mode!r} is not one of {sorted(SIZE_MODES)}"
            )
        consumed |= {"aspect_ratio", "resolution"}
        aspect = str(
            params.get("aspect_ratio") or ("16:9" if request.category == "video" else "1:1")
        )
        if size_mode == "image_size_enum":
            body["image_size"] = IMAGE_SIZE_PRESETS.get(aspect, "square_hd")
        else:
            width, height = pixel_size(request.category, aspect, params.get("resolution"))
            if size_mode == "image_size":
                body["image_size"] = {"width": width, "height": height}
            else:
                body["width"], body["height"] = width, height

    references = _reference_urls(request)
    if references:
        consumed.add("reference_images")
        target = fields.get("reference_images", DEFAULT_REFERENCE_FIELD.get(request.category))
        mode = options.get("reference_images", "first" if request.category == "video" else "list")
        if mode not in ("list", "first"):
            raise ProviderFatalError(
                f"fal route option reference_images={mode!r} is not list|first"
            )
        if target:
            body[target] = references if mode == "list" else references[0]

    for name, value in params.items():
        target = fields.get(name)
        if name in consumed or not target or value is None:
            continue
        mapped = values.get(name)
        if isinstance(mapped, dict) and _value_key(value) in mapped:
            value = mapped[_value_key(value)]
        body[str(target)] = value

    body.update(_table(options, "input"))
    return body


def pixel_size(category: str, aspect: str, resolution: Any) -> tuple[int, int]:
    """Pixel dimensions for our aspect ratio and resolution: images by their long side
    (1K = 1024), video by its short side (720p = 720); multiples of 8."""
    ratio_w, ratio_h = ASPECT_RATIOS.get(aspect, (1, 1))
    if category == "video":
        short = VIDEO_SHORT_SIDE.get(str(resolution), 720)
        long_side = short * max(ratio_w, ratio_h) / min(ratio_w, ratio_h)
        sides = (long_side, short) if ratio_w >= ratio_h else (short, long_side)
    else:
        long_edge = IMAGE_LONG_SIDE.get(str(resolution), 1024)
        short_side = long_edge * min(ratio_w, ratio_h) / max(ratio_w, ratio_h)
        sides = (long_edge, short_side) if ratio_w >= ratio_h else (short_side, long_edge)
    width, height = (max(8, round(side / 8) * 8) for side in sides)
    return width, height


def output_files(result: dict[str, Any], category: str) -> list[FileRef]:
    """Every file the result points at: the category's usual keys first, else any
    File-shaped object (`{"url": ...}`) at the top level."""
    found: list[FileRef] = []
    for key in OUTPUT_KEYS.get(category, ()):
        found.extend(_file_refs(result.get(key)))
    if not found:
        for value in result.values():
            found.extend(_file_refs(value))
    return found


def _file_refs(value: Any) -> list[FileRef]:
    if isinstance(value, list):
        return [ref for item in value for ref in _file_refs(item)]
    if isinstance(value, str) and value.startswith(("https://", "http://", "data:")):
        return [FileRef(value)]
    if not isinstance(value, dict) or not isinstance(value.get("url"), str):
        return []
    duration = value.get("duration")
    return [
        FileRef(
            url=value["url"],
            content_type=value.get("content_type")
            if isinstance(value.get("content_type"), str)
            else None,
            width=_int_or_none(value.get("width")),
            height=_int_or_none(value.get("height")),
            duration_s=float(duration) if isinstance(duration, int | float) else None,
        )
    ]


def submit_error(response: httpx.Response, model: str) -> ProviderError:
    if response.status_code == 404:
        return ProviderFatalError(f"fal does not know model {model!r} (HTTP 404)")
    return _error_for(response, "submit")


def poll_error(response: httpx.Response, stage: str) -> ProviderError:
    if response.status_code == 404:
        # The queue no longer knows the request (results are kept for a limited time):
        # only a new submission can still deliver.
        return ProviderRetriableError(f"fal no longer knows this request ({stage}: HTTP 404)")
    return _error_for(response, stage)


def _error_for(response: httpx.Response, stage: str) -> ProviderError:
    """Map a fal error answer. Model errors (docs "Model Errors") have `detail` as a list
    of `{loc, msg, type}`; request errors (docs "Request Errors") have `detail` as a string
    and `error_type` (also in the `X-Fal-Error-Type` header)."""
    status = response.status_code
    body = _json_object(response)
    detail = body.get("detail")
    messages: list[str] = []
    types: list[str] = []
    if isinstance(detail, list):
        for item in detail:
            if isinstance(item, dict):
                messages.append(str(item.get("msg", "")))
                types.append(str(item.get("type", "")))
    elif isinstance(detail, str):
        messages.append(detail)
    error_type = str(body.get("error_type") or response.headers.get("x-fal-error-type") or "")
    text = "; ".join(m for m in messages if m) or _snippet(response)
    where = f"fal {stage} (HTTP {status})"
    if status in (401, 402, 403):
        return ProviderFatalError(f"{where}: credentials or account refused: {text}")
    if status == 499 or error_type == "client_cancelled":
        return ProviderRejectedError("canceled upstream")
    if "content_policy_violation" in types or _mentions_content(text):
        return ProviderRejectedError(f"{where}: content rejected: {text}", content=True)
    if response.headers.get("x-fal-retryable", "").lower() == "true" or status >= 500:
        return ProviderRetriableError(f"{where}: {text}")
    return ProviderRejectedError(f"{where}: {text}")


def _mentions_content(text: str) -> bool:
    lowered = text.lower()
    return any(marker in lowered for marker in CONTENT_MARKERS)


def decode_data_uri(uri: str) -> tuple[bytes, str]:
    header, _, payload = uri.partition(",")
    meta = header[len("data:") :].split(";")
    content_type = (meta[0] or "application/octet-stream").lower()
    try:
        data = (
            base64.b64decode(payload, validate=True)
            if "base64" in meta[1:]
            else unquote_to_bytes(payload)
        )
    except (binascii.Error, ValueError):
        raise ProviderRetriableError("fal returned an unreadable data URI") from None
    return data, content_type


def _guess_type(url: str) -> str:
    guessed, _ = mimetypes.guess_type(urlsplit(url).path)
    return guessed or "application/octet-stream"


def _reference_urls(request: RenderRequest) -> list[str]:
    urls = request.params.get("reference_images") or [ref.url for ref in request.reference_images]
    return [str(url) for url in urls]


def _value_key(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _table(options: dict[str, Any], key: str) -> dict[str, Any]:
    value = options.get(key, {})
    if not isinstance(value, dict):
        raise ProviderFatalError(f"fal route option {key!r} must be a table")
    return value


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _snippet(response: httpx.Response, limit: int = 300) -> str:
    return response.text[:limit].replace("\n", " ") or "<empty body>"
