"""The `runware` provider: images and videos on Runware's HTTP (REST) API.

What Runware documents ("Connection & Authentication", "Image Inference API", "Task
Polling"/"Task Responses", "Errors" on runware.ai/docs), and which branch implements it:

- One endpoint, `POST https://api.runware.ai/v1`; the body is always a JSON *array* of
  task objects. REST authenticates either with an `authentication` task as the first
  array element or with `Authorization: Bearer <API_KEY>`; the docs state no preference.
  We send the header (Runware's own SDKs do): the key stays out of bodies we log, and
  ProviderHttp sends it only to the configured host, never to the image CDN.
- Rendering is an `imageInference` (or `videoInference`) task: `taskUUID` (a UUID v4 the
  *client* generates), `model` (an AIR id such as `runware:101@1`), `positivePrompt`,
  `negativePrompt`, `width`/`height` (divisible by 64, 128-2048 for the classic models),
  `numberResults`, `outputType` (`URL` default | `base64Data` | `dataURI`), `outputFormat`
  (`JPG` default | `PNG` | `WEBP`), `seed` (min 1), `steps`, `CFGScale`, `seedImage`,
  `referenceImages`, `includeCost`, and `deliveryMethod` (`sync` default | `async`).
- `deliveryMethod: "async"` answers at once with an acknowledgement; the result is then
  fetched with a `getResponse` task carrying the same `taskUUID`. Its answer lists one
  `data` item per generation with `status` `processing` | `success` (with `imageUUID`,
  `imageURL`/`imageBase64Data`/`imageDataURI`, `seed`, `cost`, `NSFWContent` when the
  `safety` check is on), failed generations go to the `errors` array. We always use async
  delivery: the handle (`taskUUID`) is known before the POST and is all a new adapter
  instance needs to resume, so a retried attempt never renders (and pays) twice.
- Errors come as `{"errors": [{"code", "message", "parameter", "taskType", "taskUUID",
  "documentation"}]}` with HTTP 400 (bad request), 401 (no valid key), 402 (balance), 403
  (permission), 404, 429 (queue full), 500/503 (Runware or the model's provider). The
  docs say codes are still being standardised; the code names we branch on are the ones
  Runware's official SDKs classify (safety, auth, quota, not-found, timeout, provider).
- There is no documented way to cancel a task, so `cancel` is a no-op and the task runs
  to its end upstream. Undocumented: what `getResponse` answers for a task it no longer
  knows; the SDKs' catalogues name `taskNotFound` / `taskExpired` /
  `taskFailedOrNotFound`, and those (at any HTTP status) mean "submit again".

Route options (all optional; bad values raise ProviderFatalError, the route is broken):
- `input`: fixed task fields merged last, e.g. `{ steps = 28, CFGScale = 3.5,
  outputFormat = "PNG", scheduler = "Euler" }`; `taskType`, `taskUUID`, `deliveryMethod`
  and `model` are ours and refused. A nested `inputs` table is merged, not replaced.
- `size_multiple`: width/height are rounded to this multiple (default 64 for images, as
  the docs require for the classic models; 8 for videos, keeping 1280x720 and 1920x1080).
- `sizes`: explicit dimensions for models with fixed size sets, `"16:9@2K"` (aspect ratio
  @ resolution) beating `"16:9"`; values `"1344x768"` or `[1344, 768]`.
- `reference_images`: where the client's references go: `referenceImages` (image
  default), `seedImage` (the first one; image-to-image), `frameImages` (video default:
  first and last frame), `inputs.referenceImages`, `inputs.frameImages` (newer models
  take their media under `inputs`), or `none`.
- `reference_images_as`: `url` (default; Runware fetches the public URL) or `data_uri`
  (the bytes the worker fetched, inline).
"""

from __future__ import annotations

import base64
import binascii
import math
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from vivix.providers.base import (
    OutputFile,
    Progress,
    ProviderError,
    ProviderFatalError,
    ProviderRejectedError,
    ProviderRetriableError,
    ReferenceImage,
    RenderRequest,
    RenderResult,
    UpstreamHandle,
)
from vivix.providers.http import (
    decode_data_uri,
    json_object_or_empty,
    parse_retry_after,
)
from vivix.providers.media import probe, sniff_image_type
from vivix.providers.upstream import UpstreamAdapter, strip_api_path

DEFAULT_BASE_URL = "https://api.runware.ai"
API_PATH = "/v1"
# Async delivery acknowledges at once and getResponse is a lookup: no call should hold
# the connection long.
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)

ASPECT_RATIOS = {"1:1": (1, 1), "4:5": (4, 5), "9:16": (9, 16), "16:9": (16, 9)}
IMAGE_LONG_SIDE = {"1K": 1024, "2K": 2048, "4K": 4096}
VIDEO_SHORT_SIDE = {"720p": 720, "1080p": 1080, "2160p": 2160}
# Classic image models want multiples of 64 (documented); video models take exact sizes
# such as 1280x720 / 1920x1080, which multiples of 8 preserve.
DEFAULT_SIZE_MULTIPLE = {"image": 64, "video": 8}
# Runware's seed minimum is 1; our 0 maps just past our own range (2^32 - 1) so every seed
# we accept stays distinct and reproducible (the documented maximum is 2^63).
SEED_ZERO = 2**32


@dataclass(frozen=True, slots=True)
class TaskKind:
    task_type: str
    id_key: str
    url_key: str
    base64_key: str | None
    data_uri_key: str | None
    default_references: str


TASK_KINDS = {
    "image": TaskKind(
        "imageInference",
        "imageUUID",
        "imageURL",
        "imageBase64Data",
        "imageDataURI",
        "referenceImages",
    ),
    "video": TaskKind(
        "videoInference",
        "videoUUID",
        "videoURL",
        "videoBase64Data",
        "videoDataURI",
        "frameImages",
    ),
}
TASK_KINDS_BY_TYPE = {kind.task_type: kind for kind in TASK_KINDS.values()}

RESERVED_INPUT_FIELDS = frozenset({"taskType", "taskUUID", "deliveryMethod", "model"})
REFERENCE_MODES = (
    "referenceImages",
    "seedImage",
    "frameImages",
    "inputs.referenceImages",
    "inputs.frameImages",
    "none",
)
REFERENCE_FORMS = ("url", "data_uri")

# Error codes as Runware's official SDKs classify them (the docs list no catalogue).
AUTH_CODES = frozenset(
    {
        "invalidApiKey",
        "missingApiKey",
        "unauthorized",
        "forbidden",
        "permissionDenied",
        "insufficientPermissions",
        "authenticationFailed",
        "invalidAuthentication",
        "invalidCredentials",
        "missingAuthentication",
        "accountSuspended",
        "accountDisabled",
        "organizationSuspended",
        "organizationDisabled",
    }
)
QUOTA_MARKERS = ("credit", "balance", "quota", "payment")
SAFETY_CODES = frozenset(
    {
        "contentPolicyViolation",
        "providerContentPolicyViolation",
        "sensitiveContentDetected",
        "unsafeContentDetected",
        "nsfwContentDetected",
        "promptBlocked",
        "imageBlocked",
        "moderationFailed",
    }
)
CONTENT_MARKERS = (
    "nsfw",
    "content policy",
    "content_policy",
    "moderat",
    "inappropriate",
    "unsafe content",
    "sensitive content",
)
TASK_GONE_CODES = frozenset({"taskNotFound", "taskExpired", "taskFailedOrNotFound"})
CANCELED_CODES = frozenset({"taskCancelled", "taskCanceled"})
MODEL_CODES = frozenset({"modelNotFound", "unknownModel", "invalidModel", "modelDisabled"})
TRANSIENT_CODES = frozenset(
    {
        "internalServerError",
        "serviceUnavailable",
        "serverUnavailable",
        "standardError",
        "unknownError",
        "inferenceError",
        "processingFailed",
        "taskFailed",
        "downloadFailed",
        "uploadFailed",
        "noAvailableServer",
        "modelUnavailable",
        "modelNotReady",
        "mediaStorageFileCouldNotBeMoved",
    }
)
VALIDATION_PREFIXES = ("invalid", "missing", "unsupported", "conflict", "duplicate", "max")


@dataclass(frozen=True, slots=True)
class RunwareRouteOptions:
    """A catalog route's `options` for Runware (vocabulary in the module docstring)."""

    input: dict[str, Any]
    size_multiple: int | None
    sizes: dict[str, tuple[int, int]]
    reference_images: str | None
    reference_images_as: str

    @classmethod
    def parse(cls, options: dict[str, Any]) -> RunwareRouteOptions:
        fields = options.get("input", {})
        if not isinstance(fields, dict):
            raise ProviderFatalError("runware route option input must be a table of task fields")
        reserved = sorted(RESERVED_INPUT_FIELDS & set(fields))
        if reserved:
            raise ProviderFatalError(
                f"runware route option input may not set {', '.join(reserved)}"
            )
        multiple = options.get("size_multiple")
        if multiple is not None and (
            isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1
        ):
            raise ProviderFatalError("runware route option size_multiple must be an integer >= 1")
        mode = options.get("reference_images")
        if mode is not None and mode not in REFERENCE_MODES:
            raise ProviderFatalError(
                f"runware route option reference_images must be one of {', '.join(REFERENCE_MODES)}"
            )
        form = options.get("reference_images_as", "url")
        if form not in REFERENCE_FORMS:
            raise ProviderFatalError(
                "runware route option reference_images_as must be url or data_uri"
            )
        return cls(
            input=dict(fields),
            size_multiple=multiple,
            sizes=_parse_sizes(options.get("sizes", {})),
            reference_images=mode,
            reference_images_as=form,
        )


class RunwareAdapter(UpstreamAdapter):
    """Runware over REST with async delivery. One instance per process, shared by all
    jobs. A submit is retried only when Runware provably did not take it (connect error,
    429, 503 - ProviderHttp's rule); a `getResponse` poll is idempotent and retried on any
    transient failure."""

    name = "runware"
    default_base_url = DEFAULT_BASE_URL
    default_timeout = DEFAULT_TIMEOUT
    api_path = API_PATH

    async def submit(self, request: RenderRequest) -> UpstreamHandle:
        kind = TASK_KINDS.get(request.category)
        if kind is None:
            raise ProviderFatalError(
                f"Runware routes render images and videos, not {request.category}"
            )
        if not request.upstream_model:
            raise ProviderFatalError("runware route has no upstream model (AIR id)")
        options = RunwareRouteOptions.parse(request.options)
        # Our request key is the task's UUID (Runware takes the client's): a retried
        # attempt finds the task by it (`find`) instead of rendering it again.
        task_uuid = request.request_key or str(uuid.uuid4())
        task = build_task(request, options, kind, task_uuid)
        response = await self._http.request("POST", API_PATH, json=[task], idempotent=False)
        payload = json_object_or_empty(response)
        errors = _errors_of(payload, task_uuid)
        if not response.is_success or errors:
            raise classify_error(
                errors[0] if errors else {"message": _snippet(response)},
                "submit",
                status=None if response.is_success else response.status_code,
                retry_after=parse_retry_after(response.headers.get("retry-after")),
            )
        # The acknowledgement carries nothing we need: the task is found by its UUID.
        return _handle(task, kind)

    async def find(self, request: RenderRequest) -> UpstreamHandle | None:
        """The task our request key names, if Runware has it: a getResponse for it
        answers anything but taskNotFound."""
        kind = TASK_KINDS.get(request.category)
        if kind is None or not request.request_key:
            return None
        response = await self._http.request(
            "POST",
            API_PATH,
            json=[{"taskType": "getResponse", "taskUUID": request.request_key}],
            idempotent=True,
        )
        errors = _errors_of(json_object_or_empty(response), request.request_key)
        if any(str(error.get("code")) in TASK_GONE_CODES for error in errors):
            return None
        if not response.is_success and not errors:
            raise classify_error(
                {"message": _snippet(response)}, "task lookup", status=response.status_code
            )
        task = build_task(request, RunwareRouteOptions.parse(request.options), kind, "")
        return _handle({**task, "taskUUID": request.request_key}, kind)

    async def poll(self, handle: UpstreamHandle, request: RenderRequest) -> Progress | RenderResult:
        task_uuid = handle.get("task_uuid")
        kind = TASK_KINDS_BY_TYPE.get(str(handle.get("task_type")))
        if not isinstance(task_uuid, str) or kind is None:
            raise ProviderRetriableError("runware handle lacks task_uuid/task_type", resubmit=True)
        expected = handle.get("number_results")
        expected = expected if isinstance(expected, int) and expected > 0 else 1
        response = await self._http.request(
            "POST",
            API_PATH,
            json=[{"taskType": "getResponse", "taskUUID": task_uuid}],
            idempotent=True,  # a lookup: safe to repeat on timeouts and 5xx
        )
        payload = json_object_or_empty(response)
        errors = _errors_of(payload, task_uuid)
        if not response.is_success:
            raise classify_error(
                errors[0] if errors else {"message": _snippet(response)},
                "status check",
                status=response.status_code,
                retry_after=parse_retry_after(response.headers.get("retry-after")),
            )
        items = [item for item in _data_of(payload) if _is_ours(item, task_uuid)]
        # The docs move failed generations to `errors`; the SDKs also accept a data item
        # with `status: "error"` and an `error` object, so both are read.
        failed = errors + [_item_error(item) for item in items if item.get("status") == "error"]
        if failed:
            raise classify_error(failed[0], "task", status=None, task_failed=True)
        finished = _finished_items(items, kind)
        if len(finished) >= expected:
            return RenderResult(await self._download(finished, kind))
        return Progress(fraction=_fraction(items, len(finished), expected), status="processing")

    async def cancel(self, handle: UpstreamHandle) -> None:
        # Runware documents no way to stop a task: nothing to ask for.
        return None

    async def _download(self, items: list[dict[str, Any]], kind: TaskKind) -> list[OutputFile]:
        kept = [item for item in items if item.get("NSFWContent") is not True]
        if items and not kept:
            # With `safety` on, Runware flags each output; all flagged means nothing to deliver.
            raise ProviderRejectedError("Runware's safety check flagged every output", content=True)
        outputs = []
        for item in kept:
            url = item.get(kind.url_key)
            if isinstance(url, str) and url:
                data, content_type = await self._http.download(url)
            else:
                data, content_type = _inline_file(item, kind)
            outputs.append(probe(OutputFile(data, _content_type(data, content_type, kind))))
        return outputs


def _handle(task: dict[str, Any], kind: TaskKind) -> UpstreamHandle:
    expected = task.get("numberResults", 1)
    return {
        "task_uuid": task["taskUUID"],
        "task_type": kind.task_type,
        "number_results": expected if isinstance(expected, int) and expected > 0 else 1,
    }


def build_task(
    request: RenderRequest, options: RunwareRouteOptions, kind: TaskKind, task_uuid: str
) -> dict[str, Any]:
    """The `imageInference`/`videoInference` task for one render."""
    params = request.params
    video = kind.task_type == "videoInference"
    aspect = str(params.get("aspect_ratio") or ("16:9" if video else "1:1"))
    resolution = str(params.get("resolution") or ("720p" if video else "1K"))
    multiple = options.size_multiple or DEFAULT_SIZE_MULTIPLE[request.category]
    width, height = options.sizes.get(f"{aspect}@{resolution}") or options.sizes.get(
        aspect, pixel_size(request.category, aspect, resolution, multiple)
    )
    task: dict[str, Any] = {
        "taskType": kind.task_type,
        "taskUUID": task_uuid,
        "deliveryMethod": "async",
        "model": request.upstream_model,
        "positivePrompt": params["prompt"],
        "width": width,
        "height": height,
        "outputType": "URL",
        "includeCost": True,
    }
    if params.get("negative_prompt"):
        task["negativePrompt"] = params["negative_prompt"]
    if not video:
        task["numberResults"] = int(params.get("number_results") or 1)
    if params.get("duration") is not None:
        task["duration"] = params["duration"]
    seed = params.get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool):
        task["seed"] = seed if seed >= 1 else SEED_ZERO
    _put_references(task, request, options, kind)
    for key, value in options.input.items():
        if key == "inputs" and isinstance(value, dict) and isinstance(task.get("inputs"), dict):
            task["inputs"] = {**task["inputs"], **value}
        else:
            task[key] = value
    return task


def pixel_size(category: str, aspect: str, resolution: str, multiple: int) -> tuple[int, int]:
    """Pixel dimensions for our aspect ratio and resolution, each side rounded to
    `multiple`: images by their long side (1K = 1024), videos by their short side
    (720p = 720)."""
    ratio_w, ratio_h = ASPECT_RATIOS.get(aspect) or _parse_ratio(aspect)
    if category == "video":
        short = VIDEO_SHORT_SIDE.get(resolution, 720)
        long_side = short * max(ratio_w, ratio_h) / min(ratio_w, ratio_h)
        sides = (long_side, short) if ratio_w >= ratio_h else (short, long_side)
    else:
        long_edge = IMAGE_LONG_SIDE.get(resolution, 1024)
        short_side = long_edge * min(ratio_w, ratio_h) / max(ratio_w, ratio_h)
        sides = (long_edge, short_side) if ratio_w >= ratio_h else (short_side, long_edge)
    width, height = (max(multiple, round(side / multiple) * multiple) for side in sides)
    return width, height


def classify_error(
    error: dict[str, Any],
    stage: str,
    *,
    status: int | None,
    retry_after: float | None = None,
    task_failed: bool = False,
) -> ProviderError:
    """One Runware error object (and the HTTP status, when the call itself failed) as one
    of our three error kinds. `task_failed`: the error reports the end of a submitted task,
    so a transient cause needs a new submission rather than another poll."""
    code = str(error.get("code") or "")
    message = str(error.get("message") or "")
    lowered = code.lower()
    label = code or (f"HTTP {status}" if status else "error")
    text = f"runware {stage} failed ({label}): {message or 'no details'}"
    if status == 401 or code in AUTH_CODES or "apikey" in lowered:
        return ProviderFatalError(text)  # the key is wrong: the route is unusable
    if status == 402 or any(marker in lowered for marker in QUOTA_MARKERS):
        return ProviderFatalError(text)  # out of balance: no render will be paid for
    if status == 403:
        return ProviderFatalError(text)
    validation = lowered.startswith(VALIDATION_PREFIXES)
    if code in SAFETY_CODES or (not validation and _mentions_content(message)):
        return ProviderRejectedError(text, content=True)
    if code in TASK_GONE_CODES:
        return ProviderRetriableError(text, 0.0, resubmit=True)
    if code in CANCELED_CODES:
        return ProviderRejectedError(f"canceled upstream: {text}")
    if code in MODEL_CODES:
        return ProviderFatalError(text)  # the route names a model Runware doesn't serve
    if status == 429 or "ratelimit" in lowered:
        return ProviderRetriableError(text, retry_after)
    if (
        "timeout" in lowered
        or code in TRANSIENT_CODES
        or (lowered.startswith("provider") and not validation)
        or (status is not None and status >= 500)
    ):
        return ProviderRetriableError(text, retry_after, resubmit=task_failed)
    if status in (404, 405):
        return ProviderFatalError(text)  # no Runware API at the configured URL
    return ProviderRejectedError(text)


def api_root(base_url: str) -> str:
    """Accept the base URL with or without the documented `/v1` suffix."""
    return strip_api_path(base_url, API_PATH)


def _put_references(
    task: dict[str, Any], request: RenderRequest, options: RunwareRouteOptions, kind: TaskKind
) -> None:
    references = request.reference_images or [
        ReferenceImage(str(url)) for url in request.params.get("reference_images") or []
    ]
    mode = options.reference_images or kind.default_references
    if not references or mode == "none":
        return
    sources = [_reference_source(ref, options.reference_images_as) for ref in references]
    if mode == "referenceImages":
        task["referenceImages"] = sources
    elif mode == "seedImage":
        task["seedImage"] = sources[0]
    elif mode == "frameImages":
        task["frameImages"] = _frames(sources, "inputImage")
    elif mode == "inputs.referenceImages":
        task.setdefault("inputs", {})["referenceImages"] = sources
    else:
        task.setdefault("inputs", {})["frameImages"] = _frames(sources, "image")


def _frames(sources: list[str], key: str) -> list[dict[str, str]]:
    # One reference is the first frame; with more, the last one ends the clip.
    frames = [{key: sources[0], "frame": "first"}]
    if len(sources) > 1:
        frames.append({key: sources[-1], "frame": "last"})
    return frames


def _reference_source(ref: ReferenceImage, form: str) -> str:
    if form == "data_uri" and ref.data is not None:
        content_type = ref.content_type or sniff_image_type(ref.data) or "image/png"
        return f"data:{content_type};base64,{base64.b64encode(ref.data).decode()}"
    return ref.url


def _item_error(item: dict[str, Any]) -> dict[str, Any]:
    error = item.get("error")
    return {**item, **error} if isinstance(error, dict) else item


def _finished_items(items: list[dict[str, Any]], kind: TaskKind) -> list[dict[str, Any]]:
    """Each finished generation once (polls return the cumulative state)."""
    finished: dict[str, dict[str, Any]] = {}
    for item in items:
        has_file = any(
            isinstance(item.get(key), str) and item.get(key)
            for key in (kind.url_key, kind.base64_key, kind.data_uri_key)
            if key
        )
        if item.get("status") == "processing" or not has_file:
            continue
        identity = item.get(kind.id_key) or item.get(kind.url_key) or str(len(finished))
        finished.setdefault(str(identity), item)
    return list(finished.values())


def _fraction(items: list[dict[str, Any]], finished: int, expected: int) -> float | None:
    reported = [
        float(item["progress"]) / 100.0
        for item in items
        if isinstance(item.get("progress"), int | float)
        and not isinstance(item.get("progress"), bool)
    ]
    if reported:
        return min(1.0, max(0.0, sum(reported) / max(len(reported), 1)))
    return finished / expected if finished else None


def _inline_file(item: dict[str, Any], kind: TaskKind) -> tuple[bytes, str]:
    encoded = item.get(kind.base64_key) if kind.base64_key else None
    if isinstance(encoded, str) and encoded:
        try:
            return base64.b64decode(encoded, validate=True), ""
        except (binascii.Error, ValueError):
            # The stored result itself is broken: polling again returns the same bytes.
            raise ProviderRetriableError(
                "Runware returned undecodable base64", resubmit=True
            ) from None
    uri = item.get(kind.data_uri_key) if kind.data_uri_key else None
    if isinstance(uri, str) and uri.startswith("data:"):
        return decode_data_uri(uri, "runware")
    raise ProviderRejectedError("Runware finished the task without an output file")


def _content_type(data: bytes, declared: str, kind: TaskKind) -> str:
    sniffed = sniff_image_type(data)
    if sniffed:
        return sniffed  # the bytes decide: CDNs often say application/octet-stream
    if declared and declared not in ("application/octet-stream", "binary/octet-stream"):
        return declared
    return "video/mp4" if kind.task_type == "videoInference" else "image/jpeg"


def _parse_sizes(value: Any) -> dict[str, tuple[int, int]]:
    if not isinstance(value, dict):
        raise ProviderFatalError("runware route option sizes must be a table")
    sizes: dict[str, tuple[int, int]] = {}
    for key, size in value.items():
        parts: list[Any] = size.lower().split("x") if isinstance(size, str) else size
        try:
            width, height = (int(part) for part in parts)
        except (TypeError, ValueError):
            raise ProviderFatalError(
                f'runware route option sizes.{key} must be "WxH" or [W, H]'
            ) from None
        sizes[str(key)] = (width, height)
    return sizes


def _parse_ratio(aspect: str) -> tuple[int, int]:
    left, _, right = aspect.partition(":")
    try:
        width, height = int(left), int(right)
    except ValueError:
        return 1, 1
    if width <= 0 or height <= 0:
        return 1, 1
    divisor = math.gcd(width, height)
    return width // divisor, height // divisor


def _mentions_content(text: str) -> bool:
    lowered = text.lower()
    return any(marker in lowered for marker in CONTENT_MARKERS)


def _is_ours(item: dict[str, Any], task_uuid: str) -> bool:
    return item.get("taskUUID") in (None, task_uuid)


def _data_of(payload: dict[str, Any]) -> list[dict[str, Any]]:
    data = payload.get("data")
    return [item for item in data if isinstance(item, dict)] if isinstance(data, list) else []


def _errors_of(payload: dict[str, Any], task_uuid: str) -> list[dict[str, Any]]:
    errors = payload.get("errors")
    if isinstance(payload.get("error"), dict):  # a bare `error` object, seen on some paths
        errors = [payload["error"]]
    if not isinstance(errors, list):
        return []
    return [error for error in errors if isinstance(error, dict) and _is_ours(error, task_uuid)]


def _snippet(response: httpx.Response, limit: int = 300) -> str:
    return response.text[:limit].replace("\n", " ") or "<empty body>"
