"""The `openai` provider: the OpenAI Images API, and any server that speaks it.

What the OpenAI API reference specifies ("Images": create, create edit; "Error codes"), and
which branch below implements it:

`POST /v1/images/generations` with `Authorization: Bearer` and JSON `{model, prompt, n
(1-10; dall-e-3 only 1), size, quality, response_format, output_format, background,
moderation, ...}` answers `{created, data: [{b64_json | url, revised_prompt?}], usage?}`.
Sizes: GPT image models 1024x1024, 1536x1024, 1024x1536 or auto; dall-e-3 1024x1024,
1792x1024, 1024x1792; dall-e-2 squares. `response_format` ("url" | "b64_json") exists
only for dall-e-2/3: GPT image models always answer base64 and reject the field, so it is
sent only when the route asks for it (`options.response_format`), which is also how an
OpenAI-compatible server that prefers URLs is configured. There is no seed or negative
prompt; a compatible server that has them gets them through `options.pass_params`.

With reference images the call goes to `POST /v1/images/edits`: multipart with one
`image[]` part per source (the classic form, used when the worker fetched the bytes) or
JSON `images: [{image_url}]` (the newer form, used when only URLs are known).

The call is synchronous and has no job id. b64_json outputs are decoded into the handle's
in-memory `result`, which is never persisted: an attempt resumed after a crash finds
nothing, `poll` raises a retriable error and the worker submits again (paid twice; the
upstream offers nothing to resume). url outputs stay in the handle, are persisted, and
`poll` downloads them, so a resumed attempt can still collect them while they live
(OpenAI: 60 minutes). There is nothing to cancel.

Errors are `{"error": {"message", "type", "param", "code"}}`. 401 (invalid_api_key), 403
(no access, unverified organization) and 404 (model_not_found) mean the route is unusable;
400 with code `moderation_blocked` (GPT image models) or `content_policy_violation`
(dall-e) is a safety refusal; other 400/422 are bad input. 429 and 5xx are retried by
ProviderHttp (a submit only when the upstream provably did not take it), except a 429
that is about billing (type `insufficient_quota`, codes like `billing_hard_limit_reached`):
that route stays unusable until someone pays, so it is fatal at once.

This module also holds the pieces of the OpenAI images protocol that xAI's
OpenAI-compatible image endpoints share (output items, handles, errors); the generic
route option readers are in `vivix.providers.route_options`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import httpx

from vivix.providers.base import (
    OutputFile,
    ProviderError,
    ProviderFatalError,
    ProviderRejectedError,
    ProviderRetriableError,
    ReferenceImage,
    RenderRequest,
    RenderResult,
    UpstreamHandle,
)
from vivix.providers.http import ProviderHttp, parse_retry_after
from vivix.providers.media import probe, sniff_image_type
from vivix.providers.route_options import (
    option_choice,
    option_string_list,
    option_string_map,
    option_table,
)
from vivix.providers.upstream import UpstreamAdapter, strip_api_path

DEFAULT_BASE_URL = "https://api.openai.com"
# GPT image models take up to a couple of minutes for high quality, several images.
DEFAULT_TIMEOUT = httpx.Timeout(300.0, connect=10.0)

# Our aspect ratios -> the nearest size each model family offers.
GPT_IMAGE_SIZES = {"1:1": "1024x1024", "4:5": "1024x1536", "9:16": "1024x1536", "16:9": "1536x1024"}
DALL_E_3_SIZES = {"1:1": "1024x1024", "4:5": "1024x1792", "9:16": "1024x1792", "16:9": "1792x1024"}
DALL_E_2_SIZES = {"1:1": "1024x1024", "4:5": "1024x1024", "9:16": "1024x1024", "16:9": "1024x1024"}

RESPONSE_FORMATS = ("url", "b64_json")
REFERENCE_FORMS = ("auto", "upload", "url")
CONTENT_CODES = frozenset({"moderation_blocked", "content_policy_violation"})
# Billing answers (429 with error type `insufficient_quota`, the cause in `code`): waiting
# doesn't help, only a payment or a raised limit does.
BILLING_CODES = frozenset(
    {
        "insufficient_quota",
        "billing_hard_limit_reached",
        "billing_not_active",
        "credit_balance_exhausted",
        "organization_spend_limit_exceeded",
        "project_spend_limit_exceeded",
        "organization_usage_limit_exceeded",
    }
)
FATAL_CODES = frozenset({"invalid_api_key", "model_not_found"}) | BILLING_CODES
CONTENT_MARKERS = ("safety system", "content policy", "content_policy", "moderation_blocked")


@dataclass(frozen=True, slots=True)
class OpenAiRouteOptions:
    """A catalog route's `options` for the OpenAI images API; every key is optional.

    - response_format: "url" or "b64_json", sent only when set (dall-e and compatible
      servers; GPT image models reject the field and always answer base64).
    - size_map: our aspect ratio -> `size`, merged over the model family's defaults; a
      "16:9@2K" key (aspect ratio @ resolution) beats a plain "16:9" one.
    - quality_map: our resolution -> `quality` (e.g. `{ "1K" = "low", "4K" = "high" }`).
    - pass_params: canonical params sent verbatim (e.g. `["seed", "negative_prompt"]` for
      a compatible server that has them).
    - input: fixed request fields merged last, so they win (e.g. `{ output_format =
      "jpeg", background = "opaque", moderation = "low" }`).
    - reference_images_as: "auto" (default: upload the fetched bytes, else send URLs),
      "upload" or "url".
    - edit_upload_field: the multipart field of uploaded references (default "image[]";
      "image" for dall-e-2 style servers).
    Bad values raise ProviderFatalError: the route is misconfigured.
    """

    response_format: str | None
    size_map: dict[str, str]
    quality_map: dict[str, str]
    pass_params: tuple[str, ...]
    input: dict[str, Any]
    reference_images_as: str
    edit_upload_field: str

    @classmethod
    def parse(cls, options: dict[str, Any], upstream_model: str) -> OpenAiRouteOptions:
        response_format = options.get("response_format")
        if response_format is not None and response_format not in RESPONSE_FORMATS:
            raise ProviderFatalError("route option response_format must be url or b64_json")
        upload_field = options.get("edit_upload_field", "image[]")
        if not isinstance(upload_field, str) or not upload_field:
            raise ProviderFatalError("route option edit_upload_field must be a field name")
        return cls(
            response_format=response_format,
            size_map={**default_size_map(upstream_model), **option_string_map(options, "size_map")},
            quality_map=option_string_map(options, "quality_map"),
            pass_params=option_string_list(options, "pass_params"),
            input=option_table(options, "input"),
            reference_images_as=option_choice(
                options, "reference_images_as", REFERENCE_FORMS, "auto"
            ),
            edit_upload_field=upload_field,
        )


def default_size_map(upstream_model: str) -> dict[str, str]:
    if upstream_model.startswith("dall-e-3"):
        return dict(DALL_E_3_SIZES)
    if upstream_model.startswith("dall-e-2"):
        return dict(DALL_E_2_SIZES)
    return dict(GPT_IMAGE_SIZES)


class OpenAiImagesAdapter(UpstreamAdapter):
    """The OpenAI Images API (or a compatible server at `base_url`). One instance per
    process, shared by all jobs."""

    name = "openai"
    default_base_url = DEFAULT_BASE_URL
    default_timeout = DEFAULT_TIMEOUT
    api_path = "/v1"

    def classify_error(self, response: httpx.Response) -> ProviderError | None:
        return billing_refusal(response)

    async def find(self, request: RenderRequest) -> UpstreamHandle | None:
        # One synchronous call without a job id: a lost answer can't be found again.
        return None

    async def submit(self, request: RenderRequest) -> UpstreamHandle:
        if request.category != "image":
            raise ProviderFatalError(
                f"the OpenAI images API renders images, not {request.category}"
            )
        options = OpenAiRouteOptions.parse(request.options, request.upstream_model)
        body = image_request_body(request, options)
        if not request.reference_images:
            response = await self._http.request(
                "POST", "/v1/images/generations", json=body, idempotent=False
            )
        elif uploads := _uploads(request.reference_images, options.reference_images_as):
            response = await self._http.request(
                "POST",
                "/v1/images/edits",
                idempotent=False,
                files=multipart_fields(body, uploads, options.edit_upload_field),
            )
        else:
            body["images"] = [{"image_url": ref.url} for ref in request.reference_images]
            response = await self._http.request(
                "POST", "/v1/images/edits", json=body, idempotent=False
            )
        if not response.is_success:
            raise_for_openai_error(response, "image generation")
        payload = json_object(response, "OpenAI image generation")
        outputs = read_image_items(payload.get("data"), fallback_type=_declared_type(payload))
        if not outputs.urls and not outputs.inline:
            raise ProviderRejectedError(
                "the images API returned no images", content=outputs.withheld > 0
            )
        return outputs.handle()

    async def poll(self, handle: UpstreamHandle, request: RenderRequest) -> RenderResult:
        return await collect_images(self._http, handle)

    async def cancel(self, handle: UpstreamHandle) -> None:
        return None  # a synchronous call: by the time there is a handle, it is over


def image_request_body(request: RenderRequest, options: OpenAiRouteOptions) -> dict[str, Any]:
    params = request.params
    body: dict[str, Any] = {
        "model": request.upstream_model,
        "prompt": params["prompt"],
        "n": int(params.get("number_results", 1)),
    }
    aspect_ratio, resolution = params.get("aspect_ratio"), params.get("resolution")
    # "16:9@2K" beats "16:9": a compatible server may render other sizes per resolution.
    size = options.size_map.get(f"{aspect_ratio}@{resolution}") or options.size_map.get(
        str(aspect_ratio)
    )
    if aspect_ratio is not None and size:
        body["size"] = size
    if resolution is not None and str(resolution) in options.quality_map:
        body["quality"] = options.quality_map[str(resolution)]
    if options.response_format:
        body["response_format"] = options.response_format
    for name in options.pass_params:
        if params.get(name) is not None:
            body[name] = params[name]
    body.update(options.input)
    return body


def multipart_fields(
    body: dict[str, Any], uploads: list[tuple[bytes, str]], upload_field: str
) -> list[tuple[str, tuple[str | None, bytes | str, str] | tuple[None, str]]]:
    """The edit request as multipart: each body field as a plain part, then one file part
    per reference image."""
    parts: list[tuple[str, tuple[str | None, bytes | str, str] | tuple[None, str]]] = []
    for key, value in body.items():
        parts.append((key, (None, value if isinstance(value, str) else json.dumps(value))))
    for index, (data, content_type) in enumerate(uploads):
        extension = content_type.split("/", 1)[-1].split(";", 1)[0]
        parts.append((upload_field, (f"reference-{index}.{extension}", data, content_type)))
    return parts


def _uploads(references: list[ReferenceImage], form: str) -> list[tuple[bytes, str]] | None:
    """The reference images as (bytes, content type) when they are to be uploaded; None
    when they go by URL."""
    uploads = [
        (ref.data, ref.content_type or sniff_image_type(ref.data) or "image/png")
        for ref in references
        if ref.data is not None
    ]
    if form == "url" or (form == "auto" and len(uploads) < len(references)):
        return None
    if len(uploads) < len(references):
        raise ProviderRejectedError("the reference images could not be fetched for upload")
    return uploads


def _declared_type(payload: dict[str, Any]) -> str:
    output_format = payload.get("output_format")  # GPT image models echo it
    if isinstance(output_format, str) and output_format:
        return f"image/{'jpeg' if output_format == 'jpg' else output_format}"
    return "image/png"


# -- the OpenAI images protocol, shared with xAI ------------------------------------------


@dataclass(slots=True)
class ImageOutputs:
    """What an images API answered: downloadable URLs, decoded inline images, and how many
    items the provider's own moderation withheld."""

    urls: list[dict[str, str | None]] = field(default_factory=list)
    inline: list[OutputFile] = field(default_factory=list)
    withheld: int = 0

    def handle(self) -> UpstreamHandle:
        """URLs are persisted (a resumed attempt downloads them); decoded images travel
        only in the in-memory `result` and are counted so their loss is noticed."""
        handle: UpstreamHandle = {"kind": "image", "images": self.urls, "inline": len(self.inline)}
        if self.inline:
            handle["result"] = RenderResult(list(self.inline))
        return handle


def read_image_items(items: Any, *, fallback_type: str) -> ImageOutputs:
    if not isinstance(items, list):
        raise ProviderFatalError("the images API answered without a `data` list")
    outputs = ImageOutputs()
    for item in items:
        if not isinstance(item, dict):
            continue
        if item.get("respect_moderation") is False:  # xAI flags withheld outputs this way
            outputs.withheld += 1
            continue
        declared = item.get("mime_type") if isinstance(item.get("mime_type"), str) else None
        encoded, url = item.get("b64_json"), item.get("url")
        if isinstance(encoded, str) and encoded:
            data = decode_b64_image(encoded)
            outputs.inline.append(
                probe(OutputFile(data, image_type(data, declared, fallback_type)))
            )
        elif isinstance(url, str) and url:
            outputs.urls.append({"url": url, "content_type": declared})
    return outputs


async def collect_images(http: ProviderHttp, handle: UpstreamHandle) -> RenderResult:
    """The outputs of a synchronous image call: the in-memory ones plus the downloads."""
    stored = handle.get("result")
    inline = list(stored.outputs) if isinstance(stored, RenderResult) else []
    urls = handle.get("images") or []
    if len(inline) < int(handle.get("inline", 0) or 0) or (not urls and not inline):
        # A resumed attempt: the images came back inline and were lost with the old worker.
        raise ProviderRetriableError(
            f"the previous attempt's {http.provider} images were not kept; generating again",
            retry_after_s=0.0,
            resubmit=True,
        )
    outputs = inline
    for entry in urls:
        data, content_type = await http.download(str(entry["url"]))
        declared = entry.get("content_type") or content_type
        outputs.append(probe(OutputFile(data, image_type(data, declared, "image/png"))))
    return RenderResult(outputs)


def raise_for_openai_error(response: httpx.Response, action: str) -> NoReturn:
    code, message = error_detail(response)
    status = response.status_code
    text = f"openai {action} failed with HTTP {status}: {message or code or 'no details'}"
    if status in (401, 402, 403) or code in FATAL_CODES:
        raise ProviderFatalError(text)  # key, billing or access: the route is unusable
    if status in (404, 405, 415):
        raise ProviderFatalError(text)  # unknown model or endpoint: a misconfigured route
    if status in (400, 413, 422):
        content = code in CONTENT_CODES or mentions_any(message, CONTENT_MARKERS)
        raise ProviderRejectedError(text, content=content)
    if status in (408, 409, 425) or status >= 500:
        raise ProviderRetriableError(text, parse_retry_after(response.headers.get("retry-after")))
    raise ProviderRejectedError(text)


def billing_refusal(response: httpx.Response) -> ProviderError | None:
    """ProviderHttp's `classify_error`: a 429 about billing is not a rate limit."""
    if response.status_code != 429:
        return None
    try:
        payload = response.json()
    except ValueError:
        return None
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        return None
    if error.get("type") == "insufficient_quota" or error.get("code") in BILLING_CODES:
        detail = error.get("message") or error.get("code") or "insufficient quota"
        return ProviderFatalError(f"openai refused for billing (HTTP 429): {detail}")
    return None


def error_detail(response: httpx.Response) -> tuple[str, str]:
    """(code, message) from `{"error": {"message", "code"}}`, xAI's `{"code", "error"}`, or
    the raw text when the body isn't JSON."""
    try:
        payload = response.json()
    except ValueError:
        return "", response.text[:300]
    if not isinstance(payload, dict):
        return "", str(payload)[:300]
    error = payload.get("error")
    if isinstance(error, dict):
        code = error.get("code") or error.get("type") or ""
        return str(code), str(error.get("message") or "")[:300]
    return str(payload.get("code") or ""), str(error or payload.get("message") or "")[:300]


def mentions_any(text: str, markers: Iterable[str]) -> bool:
    lowered = text.lower()
    return any(marker in lowered for marker in markers)


def json_object(response: httpx.Response, what: str) -> dict[str, Any]:
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise ProviderFatalError(f"{what} answered with something other than a JSON object")
    return payload


def decode_b64_image(encoded: str) -> bytes:
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        # Paid for, but unreadable, and there is no job to ask again: only a new call helps.
        raise ProviderRetriableError(
            "the images API returned undecodable base64", resubmit=True
        ) from None


def image_type(data: bytes, declared: str | None, fallback: str) -> str:
    # The bytes decide: CDNs often say application/octet-stream.
    sniffed = sniff_image_type(data)
    if sniffed:
        return sniffed
    if declared and declared.startswith("image/"):
        return declared.split(";", 1)[0].strip().lower()
    return fallback


def api_root(base_url: str) -> str:
    """Accept the base URL with or without the `/v1` suffix compatible servers document."""
    return strip_api_path(base_url, "/v1")
