"""The `xai` provider: Grok Imagine images and videos on the xAI API (api.x.ai).

What the xAI documentation specifies, and which branch below implements it
(docs.x.ai: "Image Generation", "Image Editing", "Video Generation", "Debugging Errors"):

Images are synchronous. `POST /v1/images/generations` (text to image) and
`POST /v1/images/edits` (JSON, not multipart: `image: {url}` for one source or
`images: [{url}, ...]` for up to three; a url is a public https URL or a base64 data URI)
take `model, prompt, n (1-10), response_format ("url" default | "b64_json"), aspect_ratio
(1:1 3:4 4:3 9:16 16:9 2:3 3:2 9:19.5 19.5:9 9:20 20:9 1:2 2:1 auto), resolution ("1k" |
"2k")` and answer `{data: [{url | b64_json, mime_type?, revised_prompt?}], usage?}`. There
is no seed, negative prompt or job id.
- url outputs: the handle keeps the (temporary) URLs, so it is persisted and `poll`
  downloads them; an attempt resumed after a crash downloads instead of paying again,
  while the URLs live. An expired URL is a retriable error and the worker submits again.
- b64_json outputs are decoded into the handle's in-memory `result`; nothing of them is
  persisted, so a resumed attempt finds no result, `poll` raises a retriable error and
  the worker submits again (paid twice: the upstream offers no job to resume).

Videos are asynchronous. `POST /v1/videos/generations` takes `model, prompt, duration,
aspect_ratio (1:1 16:9 9:16 4:3 3:4 3:2 2:3), resolution (480p 720p; 1080p only for
grok-imagine-video-1.5 image-to-video), image: {url}` (the first frame) or
`reference_images: [{url}]` (grok-imagine-video only) and returns `{request_id}`.
`GET /v1/videos/{request_id}` reports `status` pending | done | failed | expired (HTTP 202
with no body also means pending), `progress` 0-100, `video: {url, duration,
respect_moderation}` and, when failed, `error: {code, message}`. The handle
`{"request_id": ...}` is all a new adapter instance needs to resume. No cancel endpoint is
documented, so `cancel` is a no-op and the job runs to its end upstream.

Errors come as `{"code": ..., "error": "message"}` (or the OpenAI-style
`{"error": {"message", "code"}}`). xAI answers an incorrect API key with HTTP 400, not
401, so the message is checked before a 400 is read as bad input.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import quote

import httpx

from vivix.providers.base import (
    OutputFile,
    Progress,
    ProviderFatalError,
    ProviderRejectedError,
    ProviderRetriableError,
    ReferenceImage,
    RenderRequest,
    RenderResult,
    UpstreamHandle,
)
from vivix.providers.http import parse_retry_after
from vivix.providers.media import probe, sniff_image_type
from vivix.providers.openai.adapter import (
    collect_images,
    error_detail,
    json_object,
    mentions_any,
    read_image_items,
)
from vivix.providers.route_options import (
    option_choice,
    option_string_list,
    option_string_map,
    option_table,
)
from vivix.providers.upstream import UpstreamAdapter

DEFAULT_BASE_URL = "https://api.x.ai"
# Image calls block until every image is rendered (2k, n=4 takes a while).
DEFAULT_TIMEOUT = httpx.Timeout(180.0, connect=10.0)

# Our canonical values -> xAI's. xAI has no 4:5; 3:4 is its nearest ratio. It renders at
# most "2k", so our 4K asks for its largest.
IMAGE_ASPECT_RATIOS = {"1:1": "1:1", "4:5": "3:4", "9:16": "9:16", "16:9": "16:9"}
IMAGE_RESOLUTIONS = {"1K": "1k", "2K": "2k", "4K": "2k"}
VIDEO_ASPECT_RATIOS = {"1:1": "1:1", "4:5": "3:4", "9:16": "9:16", "16:9": "16:9"}
VIDEO_RESOLUTIONS = {"720p": "720p", "1080p": "1080p", "2160p": "1080p"}

RESPONSE_FORMATS = ("url", "b64_json")
REFERENCE_FORMS = ("url", "data_uri")
VIDEO_REFERENCE_MODES = ("auto", "image", "reference_images")
# Failure codes of a video job that say "try again later" rather than "not this input".
TRANSIENT_FAILURE_CODES = frozenset(
    {
        "internal_error",
        "service_unavailable",
        "unavailable",
        "deadline_exceeded",
        "resource_exhausted",
    }
)
CONTENT_MARKERS = (
    "moderation",
    "content policy",
    "content_policy",
    "safety",
    "policy violation",
    "nsfw",
)


@dataclass(frozen=True, slots=True)
class XaiRouteOptions:
    """A catalog route's `options` for xAI; every key is optional.

    - response_format: "url" (default; persisted, resumable) or "b64_json" (images).
    - aspect_ratio_map / resolution_map: our value -> xAI's, merged over the defaults
      above (e.g. `resolution_map = { "1080p" = "720p" }` for grok-imagine-video, whose
      ceiling is 720p).
    - pass_params: canonical params sent verbatim under their own name (xAI has no seed
      or negative prompt; a proxy that does can get them).
    - input: fixed request fields merged last, so they win (e.g. `{ user = "vivix" }`).
    - reference_images_as: "url" (default: xAI fetches the client's URL) or "data_uri"
      (the bytes the worker fetched, inline).
    - video_reference_mode: "auto" (default: one reference is the first frame, several
      are `reference_images`), "image" or "reference_images".
    Bad values raise ProviderFatalError: the route is misconfigured.
    """

    response_format: str
    aspect_ratio_map: dict[str, str]
    resolution_map: dict[str, str]
    pass_params: tuple[str, ...]
    input: dict[str, Any]
    reference_images_as: str
    video_reference_mode: str

    @classmethod
    def parse(cls, options: dict[str, Any], category: str) -> XaiRouteOptions:
        video = category == "video"
        return cls(
            response_format=option_choice(options, "response_format", RESPONSE_FORMATS, "url"),
            aspect_ratio_map={
                **(VIDEO_ASPECT_RATIOS if video else IMAGE_ASPECT_RATIOS),
                **option_string_map(options, "aspect_ratio_map"),
            },
            resolution_map={
                **(VIDEO_RESOLUTIONS if video else IMAGE_RESOLUTIONS),
                **option_string_map(options, "resolution_map"),
            },
            pass_params=option_string_list(options, "pass_params"),
            input=option_table(options, "input"),
            reference_images_as=option_choice(
                options, "reference_images_as", REFERENCE_FORMS, "url"
            ),
            video_reference_mode=option_choice(
                options, "video_reference_mode", VIDEO_REFERENCE_MODES, "auto"
            ),
        )


class XaiAdapter(UpstreamAdapter):
    """Grok Imagine on xAI. One instance per process, shared by all jobs."""

    name = "xai"
    default_base_url = DEFAULT_BASE_URL
    default_timeout = DEFAULT_TIMEOUT
    api_path = "/v1"

    async def submit(self, request: RenderRequest) -> UpstreamHandle:
        options = XaiRouteOptions.parse(request.options, request.category)
        if request.category == "image":
            return await self._submit_image(request, options)
        if request.category == "video":
            return await self._submit_video(request, options)
        raise ProviderFatalError(f"xAI renders images and videos, not {request.category}")

    async def find(self, request: RenderRequest) -> UpstreamHandle | None:
        # xAI takes no id of ours and lists no jobs: a submit whose answer was lost can't
        # be found again (README, "Resuming after a crash").
        return None

    async def poll(self, handle: UpstreamHandle, request: RenderRequest) -> Progress | RenderResult:
        if "request_id" in handle:
            return await self._poll_video(str(handle["request_id"]), request)
        return await collect_images(self._http, handle)

    async def cancel(self, handle: UpstreamHandle) -> None:
        # xAI documents no way to stop an image call or a video job: nothing to ask for.
        return None

    # -- images ------------------------------------------------------------------------

    async def _submit_image(
        self, request: RenderRequest, options: XaiRouteOptions
    ) -> UpstreamHandle:
        path, body = image_request_body(request, options)
        response = await self._http.request("POST", path, json=body, idempotent=False)
        if not response.is_success:
            raise_for_upstream_error(response, "image generation")
        payload = json_object(response, "xAI image generation")
        # xAI documents base64 images as jpeg.
        outputs = read_image_items(payload.get("data"), fallback_type="image/jpeg")
        if not outputs.urls and not outputs.inline:
            reason = _moderation_reason(payload)
            if outputs.withheld or reason:
                raise ProviderRejectedError(
                    f"xAI moderation withheld the images{': ' + reason if reason else ''}",
                    content=True,
                )
            raise ProviderRejectedError("xAI returned no images")
        return outputs.handle()

    # -- videos ------------------------------------------------------------------------

    async def _submit_video(
        self, request: RenderRequest, options: XaiRouteOptions
    ) -> UpstreamHandle:
        body = video_request_body(request, options)
        response = await self._http.request(
            "POST", "/v1/videos/generations", json=body, idempotent=False
        )
        if not response.is_success:
            raise_for_upstream_error(response, "video generation")
        request_id = json_object(response, "xAI video generation").get("request_id")
        if not isinstance(request_id, str) or not request_id:
            raise ProviderFatalError("xAI video generation answered without a request_id")
        return {"request_id": request_id}

    async def _poll_video(self, request_id: str, request: RenderRequest) -> Progress | RenderResult:
        response = await self._http.request("GET", f"/v1/videos/{quote(request_id, safe='')}")
        if response.status_code == 202:
            return Progress(status="pending")  # accepted, no result metadata yet
        if response.status_code == 404:
            raise ProviderRetriableError(
                f"xAI no longer knows video request {request_id}; generating again",
                retry_after_s=0.0,
                resubmit=True,
            )
        if not response.is_success:
            raise_for_upstream_error(response, "video status")
        payload = json_object(response, "xAI video status")
        status = payload.get("status")
        raw_video = payload.get("video")
        video: dict[str, Any] = raw_video if isinstance(raw_video, dict) else {}
        if status == "done" or (status is None and video.get("url")):
            return await self._finished_video(video, request)
        if status == "failed":
            raise _video_failure(payload.get("error"))
        if status == "expired":
            # The result was not collected in time (or the job never ran): only a new
            # submission can deliver it.
            raise ProviderRetriableError(
                "xAI video request expired; generating again", 0.0, resubmit=True
            )
        progress = payload.get("progress")
        fraction = (
            min(1.0, max(0.0, float(progress) / 100.0))
            if isinstance(progress, int | float) and not isinstance(progress, bool)
            else None
        )
        return Progress(fraction=fraction, status=str(status or "pending"))

    async def _finished_video(self, video: dict[str, Any], request: RenderRequest) -> RenderResult:
        if video.get("respect_moderation") is False:
            raise ProviderRejectedError("xAI moderation withheld the video", content=True)
        url = video.get("url")
        if not isinstance(url, str) or not url:
            raise ProviderRejectedError("xAI finished the video without a URL")
        data, content_type = await self._http.download(url)
        duration = video.get("duration")
        if not isinstance(duration, int | float) or isinstance(duration, bool) or duration <= 0:
            requested = request.params.get("duration")
            duration = requested if isinstance(requested, int | float) else None
        output = OutputFile(
            data,
            content_type if content_type.startswith("video/") else "video/mp4",
            duration_s=float(duration) if duration is not None else None,
        )
        return RenderResult([probe(output)])


# -- request bodies ----------------------------------------------------------------------


def image_request_body(
    request: RenderRequest, options: XaiRouteOptions
) -> tuple[str, dict[str, Any]]:
    """The endpoint and JSON body for an image request (edits when references are given)."""
    params = request.params
    body: dict[str, Any] = {
        "model": request.upstream_model,
        "prompt": params["prompt"],
        "n": int(params.get("number_results", 1)),
        "response_format": options.response_format,
    }
    _put_mapped(body, "aspect_ratio", params.get("aspect_ratio"), options.aspect_ratio_map)
    _put_mapped(body, "resolution", params.get("resolution"), options.resolution_map)
    _put_passed(body, params, options.pass_params)
    path = "/v1/images/generations"
    sources = [_reference(ref, options.reference_images_as) for ref in request.reference_images]
    if sources:
        path = "/v1/images/edits"
        if len(sources) == 1:
            body["image"] = sources[0]
        else:
            body["images"] = sources
    body.update(options.input)
    return path, body


def video_request_body(request: RenderRequest, options: XaiRouteOptions) -> dict[str, Any]:
    params = request.params
    body: dict[str, Any] = {"model": request.upstream_model, "prompt": params["prompt"]}
    if params.get("duration") is not None:
        body["duration"] = int(params["duration"])
    _put_mapped(body, "aspect_ratio", params.get("aspect_ratio"), options.aspect_ratio_map)
    _put_mapped(body, "resolution", params.get("resolution"), options.resolution_map)
    _put_passed(body, params, options.pass_params)
    sources = [_reference(ref, options.reference_images_as) for ref in request.reference_images]
    if sources:
        mode = options.video_reference_mode
        if mode == "auto":
            mode = "image" if len(sources) == 1 else "reference_images"
        if mode == "image":
            body["image"] = sources[0]  # becomes the first frame
        else:
            body["reference_images"] = sources
    body.update(options.input)
    return body


def _put_mapped(body: dict[str, Any], key: str, value: Any, mapping: dict[str, str]) -> None:
    if value is not None:
        body[key] = mapping.get(str(value), value)


def _put_passed(body: dict[str, Any], params: dict[str, Any], names: tuple[str, ...]) -> None:
    for name in names:
        if params.get(name) is not None:
            body[name] = params[name]


def _reference(ref: ReferenceImage, form: str) -> dict[str, str]:
    if form == "data_uri" and ref.data is not None:
        content_type = ref.content_type or sniff_image_type(ref.data) or "image/png"
        return {"url": f"data:{content_type};base64,{base64.b64encode(ref.data).decode()}"}
    return {"url": ref.url}


# -- responses and errors ----------------------------------------------------------------


def raise_for_upstream_error(response: httpx.Response, action: str) -> NoReturn:
    """Map a non-success xAI answer to one of the three error kinds."""
    code, message = error_detail(response)
    status = response.status_code
    text = f"xAI {action} failed with HTTP {status}: {message or code or 'no details'}"
    if status in (401, 402, 403) or "api key" in message.lower():
        raise ProviderFatalError(text)  # credentials, permissions or credits: the route is unusable
    if status in (404, 405, 415):
        raise ProviderFatalError(text)  # unknown model or endpoint: misconfigured route
    if status in (400, 413, 422):
        raise ProviderRejectedError(text, content=is_content_refusal(code, message))
    if status in (408, 409, 425) or status >= 500:
        raise ProviderRetriableError(text, parse_retry_after(response.headers.get("retry-after")))
    raise ProviderRejectedError(text)


def is_content_refusal(code: str, message: str) -> bool:
    return mentions_any(f"{code} {message}", CONTENT_MARKERS)


def _video_failure(error: Any) -> ProviderRejectedError | ProviderRetriableError:
    code = str(error.get("code") or "") if isinstance(error, dict) else ""
    message = str(error.get("message") or "") if isinstance(error, dict) else str(error or "")
    text = f"xAI video generation failed: {message or code or 'no details'}"
    if is_content_refusal(code, message):
        return ProviderRejectedError(text, content=True)
    if code.lower() in TRANSIENT_FAILURE_CODES:
        # The job is over: asking about it again returns the same failure.
        return ProviderRetriableError(text, resubmit=True)
    return ProviderRejectedError(text)


def _moderation_reason(payload: dict[str, Any]) -> str:
    # The reference describes a string "if the request was blocked by input moderation";
    # its field name isn't given, so any top-level string field naming moderation counts.
    for key, value in payload.items():
        if "moderation" in key.lower() and isinstance(value, str) and value:
            return value
    return ""
