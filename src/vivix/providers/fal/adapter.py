"""The `fal` provider: renders on fal.ai through its queue API.

Protocol (fal docs, "Queue API" / "Inference API" reference):
- submit  `POST {queue}/{model_id}` with the model's input as the JSON body, header
  `Authorization: Key <FAL_KEY>`; the answer carries `request_id`, `status_url`,
  `response_url` and `cancel_url`.
- status  `GET status_url?logs=1` → `{"status": "IN_QUEUE" | "IN_PROGRESS" | "COMPLETED",
  ...}` (HTTP 202 while queued or running, 200 when complete); `queue_position` while
  queued (0 = next: reported as position + 1), `logs: [{message, level, source,
  timestamp}]` so far once running, whose last tqdm bar is the progress we report.
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

A submit whose answer was lost (the worker died before storing the handle): fal takes no
id of ours, but its Platform API keeps a request history (`GET {platform}/models/requests/
by-endpoint?endpoint_id=&start=&expand=payloads`, newest first, cursor pages) that lists
each request with its input. `find` looks there for a request to the same endpoint with
exactly the input we send (it carries the recorded seed), started after the intent was
recorded; only when there is none does the worker submit again. A history that isn't
there (404 at the platform URL) means "can't tell": submit again. The platform URL is
fal's (`https://api.fal.ai/v1`), or `<base_url>/v1` when the base URL is configured.

A failed poll asks for a new submission (`resubmit=True`) only when this request can no
longer deliver: the queue forgot it (404), its result is a failure fal recorded after its
own retries (marked with an error type; fal doesn't bill 5xx failures), an output file is
gone or an inline one unreadable. A status check or download we couldn't make, or a bare
5xx from in front of the queue, leaves the worker polling the same request.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import structlog

from vivix.kit.clock import iso
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
from vivix.providers.http import (
    json_object_or_empty,
    known_content_type,
)
from vivix.providers.progress import fraction_from_log_lines
from vivix.providers.route_options import (
    IMAGE_SIZE,
    IMAGE_SIZE_ENUM,
    USUAL_FIELDS,
    WIDTH_HEIGHT,
    InputConventions,
    build_input,
)
from vivix.providers.upstream import AdapterSetup, UpstreamAdapter

log = structlog.get_logger(__name__)

DEFAULT_BASE_URL = "https://queue.fal.run"
DEFAULT_PLATFORM_URL = "https://api.fal.ai/v1"
HISTORY_PAGES = 5  # pages of 100 requests searched for a lost submit
# How far before the recorded intent a request may have started (clock skew).
HISTORY_SLACK = timedelta(seconds=60)
# fal-client: ids under these namespaces carry one more segment before owner/app.
APP_NAMESPACES = frozenset({"workflows", "comfy"})

# Our canonical params as fal's model schemas usually name them (route options override it;
# see route_options). fal's `image_size` presets: 4:5 has none, the closest is 4:3 portrait.
FAL_INPUT = InputConventions(
    provider="fal",
    fields={**USUAL_FIELDS, "number_results": "num_images"},
    reference_fields={"image": "image_urls", "video": "image_url", "audio": "audio_url"},
    size_modes=frozenset({IMAGE_SIZE, IMAGE_SIZE_ENUM, WIDTH_HEIGHT}),
    size_presets={
        "1:1": "square_hd",
        "4:5": "portrait_4_3",
        "9:16": "portrait_16_9",
        "16:9": "landscape_16_9",
    },
)
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


class FalAdapter(UpstreamAdapter):
    """fal.ai queue adapter. One instance per process, shared by all jobs.

    `poll_backoff_s` is the first backoff between retried HTTP calls (doubling, jittered);
    a `Retry-After` from fal takes precedence. A submit is retried only when fal provably
    did not accept it (connect error, 429, 503) - never after a read timeout - so a job is
    never paid for twice; `ProviderHttp` implements that rule.
    """

    name = "fal"
    default_base_url = DEFAULT_BASE_URL
    auth_scheme = "Key"

    def __init__(self, setup: AdapterSetup) -> None:
        super().__init__(setup)
        # fal's Platform API (its request history): fal's own, or `<base_url>/v1` when the
        # base URL is configured (a proxy, a test double).
        configured = setup.settings.base_url
        self._platform = self._http.at(
            f"{self.base_url}/v1" if configured else DEFAULT_PLATFORM_URL
        )

    async def submit(self, request: RenderRequest) -> UpstreamHandle:
        model = request.upstream_model.strip("/")
        if not model:
            raise ProviderFatalError("fal route has no upstream model id")
        body = build_input(request, FAL_INPUT)
        response = await self._http.request("POST", f"/{model}", json=body, idempotent=False)
        if not response.is_success:
            raise submit_error(response, model)
        data = json_object_or_empty(response)
        request_id = data.get("request_id")
        if not isinstance(request_id, str) or not request_id:
            raise ProviderRetriableError("fal accepted the submit but returned no request_id")
        handle: UpstreamHandle = {"request_id": request_id, "model": model}
        return {**handle, **self._urls({**data, **handle})}

    async def find(self, request: RenderRequest) -> UpstreamHandle | None:
        if request.requested_at is None:
            return None
        model = request.upstream_model.strip("/")
        wanted = build_input(request, FAL_INPUT)
        query: dict[str, Any] = {
            "endpoint_id": model,
            "start": iso(request.requested_at - HISTORY_SLACK),
            "expand": "payloads",
            "limit": 100,
        }
        for _ in range(HISTORY_PAGES):
            response = await self._platform.request(
                "GET", "/models/requests/by-endpoint", params=query
            )
            if response.status_code in (404, 405):
                return None  # no request history at this URL: can't tell
            if not response.is_success:
                raise _error_for(response, "request history")
            page = json_object_or_empty(response)
            items = page.get("items")
            for item in items if isinstance(items, list) else []:
                request_id = item.get("request_id") if isinstance(item, dict) else None
                if isinstance(request_id, str) and item.get("json_input") == wanted:
                    handle: UpstreamHandle = {"request_id": request_id, "model": model}
                    return {**handle, **self._urls(handle)}
            cursor = page.get("next_cursor")
            if not page.get("has_more") or not isinstance(cursor, str):
                return None
            query["cursor"] = cursor
        return None

    async def poll(self, handle: UpstreamHandle, request: RenderRequest) -> Progress | RenderResult:
        urls = self._urls(handle)
        response = await self._http.request("GET", urls["status_url"], params={"logs": "1"})
        if not response.is_success:  # 202 while queued or running, 200 once completed
            raise poll_error(response, "status check")
        answer = json_object_or_empty(response)
        status = str(answer.get("status", ""))
        if status == "IN_QUEUE":
            position = answer.get("queue_position")
            ahead = (
                position if isinstance(position, int) and not isinstance(position, bool) else None
            )
            return Progress(status="queued", queue_position=None if ahead is None else ahead + 1)
        if status == "IN_PROGRESS":
            return Progress(fraction=progress_from_logs(answer.get("logs")), status="processing")
        if status.upper() in ("CANCELED", "CANCELLED"):
            raise ProviderRejectedError("canceled upstream")
        if status not in ("COMPLETED", "FAILED", "ERROR"):
            return Progress(status="processing")  # undocumented state: keep waiting
        result = await self._http.request(
            "GET", urls["response_url"], classify_error=result_failure
        )
        if not result.is_success:  # the model's own error, status code and all
            raise poll_error(result, "result")
        return RenderResult(
            await self._download_outputs(json_object_or_empty(result), request.category)
        )

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

    def _urls(self, handle: UpstreamHandle) -> dict[str, str]:
        request_id = handle.get("request_id")
        model = handle.get("model")
        if not isinstance(request_id, str) or not isinstance(model, str):
            raise ProviderRejectedError("fal handle lacks request_id/model")
        urls = request_urls(self.base_url, model, request_id)
        for key in urls:
            if isinstance(handle.get(key), str):
                urls[key] = self._http.on_base_url(handle[key])
        return urls

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
            # `sync_mode` inlines files as data URIs; `download` decodes those too.
            data, served_type = await self._http.download(file.url)
            outputs.append(
                OutputFile(
                    data,
                    known_content_type(served_type, file.url, file.content_type),
                    width=file.width,
                    height=file.height,
                    duration_s=file.duration_s,
                )
            )
        return outputs


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


def progress_from_logs(logs: Any) -> float | None:
    """The last tqdm bar among the status answer's log messages, if any."""
    if not isinstance(logs, list):
        return None
    messages = [entry.get("message") for entry in logs if isinstance(entry, dict)]
    return fraction_from_log_lines(m for m in messages if isinstance(m, str))


def submit_error(response: httpx.Response, model: str) -> ProviderError:
    if response.status_code == 404:
        return ProviderFatalError(f"fal does not know model {model!r} (HTTP 404)")
    return _error_for(response, "submit")


def poll_error(response: httpx.Response, stage: str) -> ProviderError:
    if response.status_code == 404:
        # The queue no longer knows the request (results are kept for a limited time):
        # only a new submission can still deliver.
        return ProviderRetriableError(
            f"fal no longer knows this request ({stage}: HTTP 404)", resubmit=True
        )
    # A completed request's result is final: a failure fal recorded for it (after its own
    # retries) is answered again on every poll. A status check failing, or a bare 5xx
    # from the infrastructure in front of the queue, says nothing about the request.
    return _error_for(response, stage, resubmit=stage == "result" and _recorded_by_fal(response))


def result_failure(response: httpx.Response) -> ProviderError | None:
    """For the result call: a 5xx that fal marks as the request's own failure is final,
    so ProviderHttp raises it instead of asking again (None: retry as usual)."""
    if response.status_code >= 500 and _recorded_by_fal(response):
        return poll_error(response, "result")
    return None


def _recorded_by_fal(response: httpx.Response) -> bool:
    """fal's own verdict on a request: an error type (docs "Request Errors") or an
    explicit retryable flag, as opposed to a proxy's or load balancer's answer."""
    return bool(
        response.headers.get("x-fal-error-type")
        or response.headers.get("x-fal-retryable")
        or json_object_or_empty(response).get("error_type")
    )


def _error_for(response: httpx.Response, stage: str, *, resubmit: bool = False) -> ProviderError:
    """Map a fal error answer. Model errors (docs "Model Errors") have `detail` as a list
    of `{loc, msg, type}`; request errors (docs "Request Errors") have `detail` as a string
    and `error_type` (also in the `X-Fal-Error-Type` header)."""
    status = response.status_code
    body = json_object_or_empty(response)
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
        return ProviderRetriableError(f"{where}: {text}", resubmit=resubmit)
    return ProviderRejectedError(f"{where}: {text}")


def _mentions_content(text: str) -> bool:
    lowered = text.lower()
    return any(marker in lowered for marker in CONTENT_MARKERS)


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _snippet(response: httpx.Response, limit: int = 300) -> str:
    return response.text[:limit].replace("\n", " ") or "<empty body>"
