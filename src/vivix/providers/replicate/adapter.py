"""The `replicate` provider: renders on Replicate through its predictions API.

Protocol (Replicate HTTP API reference, header `Authorization: Bearer <token>`):
- create  `POST /v1/models/{owner}/{name}/predictions` for official models, or
  `POST /v1/predictions` with `version` for a pinned version; body `{"input": {...}}`.
  201 with the prediction object. With `Prefer: wait=N` the request is held up to N s
  (max 60) and the answer may already be terminal.
- get     `GET /v1/predictions/{id}` (the prediction's `urls.get`).
- cancel  `POST /v1/predictions/{id}/cancel` (`urls.cancel`).
- prediction `{id, status, input, output, error, logs, metrics, data_removed, urls}`;
  status `starting` | `processing` | `succeeded` | `failed` | `canceled` | `aborted`
  (aborted: a `Cancel-After` deadline hit before it started). Output files are URLs
  (replicate.delivery, deleted after an hour for API predictions).
- errors are RFC 7807 problem details `{"title", "detail", "status"}`; 422 for invalid
  input, 429 with `Retry-After` when throttled.

We don't send `Prefer: wait` by default: a held connection occupies a request slot. The
adapter's `prefer_wait_s`, or a route's `prefer_wait` option (seconds, 1-60; 0 turns it
off), enables it for fast models; the create's read timeout is then raised past the wait,
so the held request can't time out on our side first (that would leave us unsure whether
the prediction exists). When the answer is already terminal, the prediction rides in the
handle's in-memory `result` key (stripped before the handle is persisted); the persisted
part - id and URLs - is enough to resume, because a resumed `poll` simply fetches the
prediction again.

A create whose answer was lost (the worker died before storing the handle): Replicate
takes no id of ours, but `GET /v1/predictions?created_after=` lists the account's
predictions, newest first, with their input. `find` looks there for a prediction of the
same model (or version) with exactly the input we send (it carries the recorded seed),
created after the intent was recorded; only when there is none does the worker create
another.

A failed poll asks for a new prediction (`resubmit=True`) only when this one can no longer
deliver: Replicate forgot it (404), it failed for a transient reason, its output was
deleted (`data_removed`, or the file answers 404/410) or is an unreadable data URI. A GET
or download we couldn't make leaves the worker polling the same prediction.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

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
    USUAL_FIELDS,
    WIDTH_HEIGHT,
    InputConventions,
    build_input,
)
from vivix.providers.upstream import AdapterSetup, UpstreamAdapter

log = structlog.get_logger(__name__)

DEFAULT_BASE_URL = "https://api.replicate.com"
LIST_PAGES = 5  # pages of 100 predictions searched for a lost create
# How far before the recorded intent a prediction may have been created (clock skew).
LIST_SLACK = timedelta(seconds=60)
MAX_PREFER_WAIT_S = 60  # Replicate holds a sync request at most this long

# Our canonical params as Replicate's model schemas usually name them (route options
# override it; see route_options).
REPLICATE_INPUT = InputConventions(
    provider="Replicate",
    fields={**USUAL_FIELDS, "number_results": "num_outputs"},
    reference_fields={"image": "image_input", "video": "image", "audio": "audio"},
    size_modes=frozenset({WIDTH_HEIGHT}),
)

TERMINAL = frozenset({"succeeded", "failed", "canceled", "aborted"})
VERSION_ID = re.compile(r"^[0-9a-f]{64}$")
# A failed prediction's `error` is free text (sometimes with an E#### code). These mark a
# moderation refusal (E005 is Replicate's "flagged as sensitive")...
CONTENT_MARKERS = (
    "nsfw",
    "flagged",
    "sensitive",
    "content policy",
    "content_policy",
    "safety",
    "moderation",
    "(e005)",
)
# ...and these a problem with the input; any other failure counts as transient.
INPUT_MARKERS = (
    "invalid",
    "validation",
    "must be",
    "not supported",
    "unsupported",
    "out of range",
    "too long",
    "too large",
    "too many",
    "could not download",
    "cannot identify image",
)


class ReplicateAdapter(UpstreamAdapter):
    """Replicate predictions adapter. One instance per process, shared by all jobs.

    `poll_backoff_s` is the first backoff between retried HTTP calls (doubling, jittered);
    a `Retry-After` from Replicate takes precedence. A create is retried only when it
    provably was not accepted (connect error, 429, 503) - never after a read timeout -
    so a prediction is never paid for twice; `ProviderHttp` implements that rule.
    """

    name = "replicate"
    default_base_url = DEFAULT_BASE_URL

    def __init__(self, setup: AdapterSetup) -> None:
        super().__init__(setup)
        self.prefer_wait_s = setup.settings.prefer_wait_seconds
        self._timeout = self._http.timeout

    async def submit(self, request: RenderRequest) -> UpstreamHandle:
        path, body = prediction_request(
            request.upstream_model, build_input(request, REPLICATE_INPUT)
        )
        wait_s = prefer_wait(request.options, self.prefer_wait_s)
        response = await self._http.request(
            "POST",
            path,
            json=body,
            headers={"Prefer": f"wait={wait_s}"} if wait_s else None,
            request_timeout=held_create_timeout(self._timeout, wait_s) if wait_s else None,
            idempotent=False,
        )
        if not response.is_success:
            raise submit_error(response, request.upstream_model)
        prediction = json_object_or_empty(response)
        prediction_id = prediction.get("id")
        if not isinstance(prediction_id, str) or not prediction_id:
            raise ProviderRetriableError("Replicate accepted the prediction but returned no id")
        handle = self._handle(prediction)
        if prediction.get("status") in TERMINAL:
            handle["result"] = prediction  # in memory only; see the module docstring
        return handle

    async def find(self, request: RenderRequest) -> UpstreamHandle | None:
        if request.requested_at is None:
            return None
        path, body = prediction_request(
            request.upstream_model, build_input(request, REPLICATE_INPUT)
        )
        since = iso(request.requested_at - LIST_SLACK)
        url = f"/v1/predictions?{urlencode({'created_after': since})}"
        for _ in range(LIST_PAGES):
            response = await self._http.request("GET", url)
            if not response.is_success:
                raise _error_for(response, "list")
            page = json_object_or_empty(response)
            results = page.get("results")
            for prediction in results if isinstance(results, list) else []:
                if isinstance(prediction, dict) and _is_our_prediction(prediction, path, body):
                    return self._handle(prediction)
            next_url = page.get("next")
            if not isinstance(next_url, str) or not next_url:
                return None
            url = self._http.on_base_url(next_url)
        return None

    def _handle(self, prediction: dict[str, Any]) -> UpstreamHandle:
        prediction_id = str(prediction["id"])
        raw_urls = prediction.get("urls")
        urls: dict[str, Any] = raw_urls if isinstance(raw_urls, dict) else {}
        return {
            "prediction_id": prediction_id,
            "get_url": self._on_api_host(urls.get("get"), f"/v1/predictions/{prediction_id}"),
            "cancel_url": self._on_api_host(
                urls.get("cancel"), f"/v1/predictions/{prediction_id}/cancel"
            ),
        }

    async def poll(self, handle: UpstreamHandle, request: RenderRequest) -> Progress | RenderResult:
        prediction = handle.get("result")
        if not isinstance(prediction, dict) or prediction.get("status") not in TERMINAL:
            response = await self._http.request("GET", self._get_url(handle))
            if not response.is_success:
                raise poll_error(response)
            prediction = json_object_or_empty(response)
        status = prediction.get("status")
        if status == "succeeded":
            if prediction.get("data_removed"):
                raise ProviderRetriableError(
                    "Replicate already deleted this prediction's output", resubmit=True
                )
            return RenderResult(await self._download(output_urls(prediction.get("output"))))
        if status == "failed":
            raise failure_error(prediction.get("error"))
        if status in ("canceled", "aborted"):
            raise ProviderRejectedError("canceled upstream")
        return Progress(
            fraction=progress_from_logs(prediction.get("logs")), status=str(status or "processing")
        )

    async def cancel(self, handle: UpstreamHandle) -> None:
        try:
            url = self._on_api_host(
                handle.get("cancel_url"), f"/v1/predictions/{handle.get('prediction_id')}/cancel"
            )
            response = await self._http.request("POST", url, idempotent=True)
        except ProviderError as exc:
            log.warning(
                "replicate_cancel_failed",
                prediction_id=handle.get("prediction_id"),
                error=exc.message,
            )
            return
        # A finished prediction is answered unchanged; unknown ids are 404. Neither matters
        # for a best-effort cancel.
        if response.status_code not in (200, 201, 202, 404):
            log.warning(
                "replicate_cancel_refused",
                prediction_id=handle.get("prediction_id"),
                status=response.status_code,
            )

    def _get_url(self, handle: UpstreamHandle) -> str:
        prediction_id = handle.get("prediction_id")
        if not isinstance(prediction_id, str) or not prediction_id:
            raise ProviderRejectedError("Replicate handle lacks prediction_id")
        return self._on_api_host(handle.get("get_url"), f"/v1/predictions/{prediction_id}")

    def _on_api_host(self, url: Any, fallback_path: str) -> str:
        """The returned URL's path on the configured API host (credentials go only there)."""
        if not isinstance(url, str) or not url:
            return f"{self.base_url}{fallback_path}"
        return self._http.on_base_url(url)

    async def _download(self, urls: list[str]) -> list[OutputFile]:
        outputs = []
        for url in urls:
            data, served_type = await self._http.download(url)  # data: URIs too
            outputs.append(OutputFile(data, known_content_type(served_type, url)))
        return outputs


def _is_our_prediction(prediction: dict[str, Any], path: str, body: dict[str, Any]) -> bool:
    """The same model (official model path) or version, and exactly our input."""
    if prediction.get("input") != body["input"] or not isinstance(prediction.get("id"), str):
        return False
    if "version" in body:
        return bool(prediction.get("version") == body["version"])
    owner_name = path.removeprefix("/v1/models/").removesuffix("/predictions")
    return prediction.get("model") == owner_name


def prefer_wait(options: dict[str, Any], default_s: int | None) -> int | None:
    """Seconds to hold the create (`Prefer: wait=N`): the route's `prefer_wait` option,
    else the adapter's default; None or 0 means don't wait."""
    value = options.get("prefer_wait", default_s)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_PREFER_WAIT_S:
        raise ProviderFatalError(
            f"Replicate route option prefer_wait must be 0-{MAX_PREFER_WAIT_S} seconds"
        )
    return value or None


def held_create_timeout(timeout: httpx.Timeout, wait_s: int) -> httpx.Timeout:
    """The client's timeout with a read timeout well past the time Replicate holds the
    create: a read timeout there would leave us unsure whether the prediction exists."""
    return httpx.Timeout(
        timeout.connect,
        read=max(timeout.read or 0.0, wait_s + 15.0),
        write=timeout.write,
        pool=timeout.pool,
    )


def prediction_request(model: str, model_input: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Path and body of the create call for a route's upstream model id:
    `owner/name` (official model), `owner/name:version` or a bare 64-hex version id."""
    model = model.strip().strip("/")
    if VERSION_ID.match(model):
        return "/v1/predictions", {"version": model, "input": model_input}
    name, _, version = model.partition(":")
    owner, _, model_name = name.partition("/")
    if not owner or not model_name or "/" in model_name:
        raise ProviderFatalError(f"Replicate route model {model!r} is not owner/name[:version]")
    if version:
        return "/v1/predictions", {"version": version, "input": model_input}
    return f"/v1/models/{owner}/{model_name}/predictions", {"input": model_input}


def output_urls(output: Any) -> list[str]:
    """Every file URL in a prediction's output, in order: a URL string, a list of them,
    or objects holding them (file objects with `url`, or named outputs)."""
    if isinstance(output, str):
        return [output] if output.startswith(("https://", "http://", "data:")) else []
    if isinstance(output, list):
        return [url for item in output for url in output_urls(item)]
    if isinstance(output, dict):
        if isinstance(output.get("url"), str):
            return output_urls(output["url"])
        return [url for value in output.values() for url in output_urls(value)]
    return []


def progress_from_logs(logs: Any) -> float | None:
    """The prediction's `logs` text: its last tqdm bar, if any."""
    return fraction_from_log_lines([logs]) if isinstance(logs, str) else None


def failure_error(error: Any) -> ProviderError:
    """A `failed` prediction: moderation → content rejection; an input problem →
    rejection; anything else (E1000 unknown, E6716 start timeout, crashes) → transient,
    for a new prediction."""
    text = str(error or "the prediction failed without an error message")
    lowered = text.lower()
    if any(marker in lowered for marker in CONTENT_MARKERS):
        return ProviderRejectedError(f"Replicate: content rejected: {text}", content=True)
    if any(marker in lowered for marker in INPUT_MARKERS):
        return ProviderRejectedError(f"Replicate rejected the input: {text}")
    # The prediction itself is over: polling it again returns the same failure.
    return ProviderRetriableError(f"Replicate prediction failed: {text}", resubmit=True)


def submit_error(response: httpx.Response, model: str) -> ProviderError:
    if response.status_code == 404:
        return ProviderFatalError(f"Replicate does not know model {model!r} (HTTP 404)")
    return _error_for(response, "create")


def poll_error(response: httpx.Response) -> ProviderError:
    if response.status_code == 404:
        return ProviderRetriableError(
            "Replicate no longer knows this prediction (HTTP 404)", resubmit=True
        )
    return _error_for(response, "get")


def _error_for(response: httpx.Response, stage: str) -> ProviderError:
    status = response.status_code
    problem = json_object_or_empty(response)
    parts = [str(problem[key]) for key in ("title", "detail") if problem.get(key)]
    text = ": ".join(parts) or response.text[:300].replace("\n", " ") or "<empty body>"
    where = f"Replicate {stage} (HTTP {status})"
    if status in (401, 402, 403):
        return ProviderFatalError(f"{where}: credentials or account refused: {text}")
    lowered = text.lower()
    if any(marker in lowered for marker in CONTENT_MARKERS):
        return ProviderRejectedError(f"{where}: content rejected: {text}", content=True)
    if status >= 500:
        return ProviderRetriableError(f"{where}: {text}")
    return ProviderRejectedError(f"{where}: {text}")
