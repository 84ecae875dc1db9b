"""The `comfyui` provider: renders on an operator's own ComfyUI server by queueing an
API-format workflow built from a template.

What ComfyUI's server (`server.py`, the "Queue API" routes; no auth of its own) provides,
and which branch below implements it:

- `POST /prompt` with `{"prompt": <API-format graph>, "client_id": ...}` validates the
  graph and queues it: 200 `{"prompt_id", "number", "node_errors"}`, or 400
  `{"error": {"type", "message", "details", "extra_info"}, "node_errors": {node_id:
  {"errors": [...], "class_type"}}}`. Error types `invalid_prompt` (e.g. a node class the
  server doesn't have), `prompt_no_outputs` and `no_prompt` mean the template or the
  deployment is broken for every input → ProviderFatalError; a graph whose values failed
  validation (`prompt_outputs_failed_validation`) is refused for this input →
  ProviderRejectedError.
- `GET /history/{prompt_id}` answers `{}` until the run has finished, then
  `{prompt_id: {"outputs": {node_id: {"images" | "gifs" | "audio" ...: [{"filename",
  "subfolder", "type"}]}}, "status": {"status_str": "success" | "error", "completed",
  "messages": [[event, data], ...]}}}`. History lives in memory (capped at 10000 runs)
  and a restart loses it.
- `GET /queue` answers `{"queue_running": [...], "queue_pending": [...]}`, each item
  `[number, prompt_id, prompt, extra_data, outputs_to_execute]`; that is how a run that
  has no history yet is told apart from one the server forgot: neither in history nor in
  the queue (checked twice, a run may finish between the two calls) → the upstream job
  is gone → ProviderRetriableError(resubmit=True).
- `GET /ws?clientId=` (websocket) streams `progress` events (`value`/`max`) of the runs
  queued with that client id: the only place a running run's progress is told
  (`comfyui.progress`; a poll of a running run returns the last one).
- `GET /view?filename=&subfolder=&type=` serves an output file.
- `POST /queue {"delete": [prompt_id]}` removes a *pending* run; `POST /interrupt` stops
  the *running* one. Newer servers take `{"prompt_id"}` and interrupt only that run; older
  ones interrupt whatever runs, so `cancel` first checks in `/queue` that the running run
  is ours (a small race remains on old servers).
- `POST /upload/image` (multipart `image`, `type`, `overwrite`) puts a reference image in
  the input folder, where `LoadImage` nodes find it by name.

Execution errors (`status_str: "error"`), our rule: an `execution_interrupted` message →
ProviderRejectedError("canceled upstream"); an `execution_error` whose exception looks
like running out of GPU/host memory (OutOfMemoryError, "out of memory", "Allocation on
device") or a network timeout/connection error of an API node is transient →
ProviderRetriableError(resubmit=True) (the run is over, only a new one can deliver); a
message naming NSFW/safety/moderation → ProviderRejectedError(content=True); anything
else → ProviderRejectedError.

Workflow templates are API-format JSON ("Save (API Format)" in ComfyUI) in which node
input strings carry placeholders. A string that is exactly one placeholder becomes the
typed value; placeholders inside a longer string are replaced by their text. The
vocabulary (anything else is refused when the template is loaded, ProviderFatalError):

    {{prompt}}            text     the prompt
    {{negative_prompt}}   text     the negative prompt ("" when none)
    {{seed}}              integer  the recorded seed (random when the params have none)
    {{width}} {{height}}  integer  from aspect_ratio + resolution (long side 1K = 1024
                                   for images, short side 720p = 720 for videos),
                                   rounded to `size_multiple`
    {{number_results}}    integer  images per run (a latent's batch_size)
    {{aspect_ratio}}      text     e.g. "16:9"
    {{resolution}}        text     e.g. "1K", "720p"
    {{duration}}          integer  seconds (videos/audio; the model must have the param)
    {{fps}}               integer  route option `fps`
    {{frames}}            integer  duration × fps + `extra_frames`
    {{reference_image}} {{reference_image_2}} {{reference_image_3}}
                          text     the uploaded reference image's name, for LoadImage

Route options (all optional; bad values raise ProviderFatalError):
- `workflow`: path of an API-format workflow JSON file on the worker's machine.
- `workflow_json`: the workflow inline (a table, or a JSON string).
  Neither: the shipped SDXL text-to-image template (`workflows/sdxl_text_to_image.json`,
  checkpoint `sd_xl_base_1.0.safetensors`).
- `output_node`: the node id whose files are the result (default: every file of type
  "output", i.e. the Save* nodes; previews only when nothing was saved).
- `size_multiple` (default 8, the latent grid), `fps` (default 24), `extra_frames`
  (default 0; e.g. 1 for models that want 4k+1 frames).

Handle: `{"prompt_id"}`, all a new adapter instance needs to resume polling.
"""

from __future__ import annotations

import asyncio
import copy
import importlib.resources
import json
import mimetypes
import re
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

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
from vivix.providers.comfyui.progress import ProgressFeed, step_nodes
from vivix.providers.http import (
    json_object_or_empty,
    parse_retry_after,
)
from vivix.providers.media import probe, sniff_image_type
from vivix.providers.runware.adapter import pixel_size
from vivix.providers.upstream import AdapterSetup, UpstreamAdapter

log = structlog.get_logger(__name__)

BUILTIN_WORKFLOW = "sdxl_text_to_image.json"
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
REFERENCE_PLACEHOLDERS = {"reference_image": 0, "reference_image_2": 1, "reference_image_3": 2}
VOCABULARY = frozenset(
    {
        "prompt",
        "negative_prompt",
        "seed",
        "width",
        "height",
        "number_results",
        "aspect_ratio",
        "resolution",
        "duration",
        "fps",
        "frames",
        *REFERENCE_PLACEHOLDERS,
    }
)
# Keys under which ComfyUI output nodes list their files (SaveImage/PreviewImage
# "images", Video Helper Suite "gifs", SaveAudio "audio", ...).
OUTPUT_FILE_KEYS = ("images", "gifs", "videos", "video", "audio", "audios")
FATAL_PROMPT_ERRORS = frozenset({"invalid_prompt", "prompt_no_outputs", "no_prompt"})
OOM_MARKERS = ("outofmemoryerror", "out of memory", "allocation on device")
TRANSIENT_EXCEPTION_MARKERS = (
    "timeout",
    "connectionerror",
    "connectionreset",
    "remotedisconnected",
)
CONTENT_MARKERS = ("nsfw", "safety checker", "content policy", "moderation", "unsafe content")
GENERIC_CONTENT_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})


@dataclass(frozen=True, slots=True)
class ComfyUiRouteOptions:
    """A catalog route's `options` for ComfyUI (vocabulary in the module docstring)."""

    workflow: str | None
    workflow_json: Any
    output_node: str | None
    size_multiple: int
    fps: int
    extra_frames: int

    @classmethod
    def parse(cls, options: dict[str, Any]) -> ComfyUiRouteOptions:
        workflow = options.get("workflow")
        workflow_json = options.get("workflow_json")
        if workflow is not None and (not isinstance(workflow, str) or not workflow):
            raise ProviderFatalError("comfyui route option workflow must be a file path")
        if workflow is not None and workflow_json is not None:
            raise ProviderFatalError(
                "comfyui route options workflow and workflow_json exclude each other"
            )
        output_node = options.get("output_node")
        if output_node is not None and (
            isinstance(output_node, bool) or not isinstance(output_node, str | int)
        ):
            raise ProviderFatalError("comfyui route option output_node must be a node id")
        return cls(
            workflow=workflow,
            workflow_json=workflow_json,
            output_node=None if output_node is None else str(output_node),
            size_multiple=_positive_int(options, "size_multiple", 8),
            fps=_positive_int(options, "fps", 24),
            extra_frames=_positive_int(options, "extra_frames", 0, minimum=0),
        )


@dataclass(frozen=True, slots=True)
class WorkflowTemplate:
    """A validated API-format workflow and the placeholders its node inputs use."""

    graph: dict[str, Any]
    placeholders: frozenset[str]
    source: str

    @classmethod
    def parse(cls, data: Any, source: str) -> WorkflowTemplate:
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except ValueError as exc:
                raise ProviderFatalError(
                    f"comfyui workflow ({source}) is not JSON: {exc}"
                ) from None
        if isinstance(data, dict) and "nodes" in data and "links" in data:
            raise ProviderFatalError(
                f"comfyui workflow ({source}) is in the UI format; export it with "
                "'Save (API Format)'"
            )
        if not isinstance(data, dict) or not data:
            raise ProviderFatalError(f"comfyui workflow ({source}) must be a non-empty JSON object")
        found: set[str] = set()
        for node_id, node in data.items():
            if (
                not isinstance(node, dict)
                or not isinstance(node.get("class_type"), str)
                or not isinstance(node.get("inputs"), dict)
            ):
                raise ProviderFatalError(
                    f"comfyui workflow ({source}): node {node_id!r} needs class_type and inputs"
                )
            _collect_placeholders(node["inputs"], found)
        unknown = sorted(found - VOCABULARY)
        if unknown:
            raise ProviderFatalError(
                f"comfyui workflow ({source}) uses unknown placeholder(s) "
                f"{', '.join('{{' + name + '}}' for name in unknown)}; known: "
                f"{', '.join(sorted(VOCABULARY))}"
            )
        return cls(graph=data, placeholders=frozenset(found), source=source)

    def render(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of the graph with every placeholder in the node inputs replaced."""
        graph = copy.deepcopy(self.graph)
        for node in graph.values():
            node["inputs"] = _substitute(node["inputs"], values)
        return graph


class ComfyUiAdapter(UpstreamAdapter):
    """One ComfyUI server (or a proxy in front of several). One instance per process,
    shared by all jobs. `api_key` may be "": ComfyUI has no auth; when set it goes as a
    Bearer token, for deployments behind an authenticating proxy."""

    name = "comfyui"

    def __init__(self, setup: AdapterSetup) -> None:
        super().__init__(setup)
        # ComfyUI routes websocket events by client id: one per process, whose progress
        # events our feed listens to (comfyui.progress).
        self._client_id = uuid.uuid4().hex
        self._file_templates: dict[str, tuple[tuple[int, int], WorkflowTemplate]] = {}
        key = setup.settings.api_key
        self._progress = ProgressFeed(
            self.base_url, self._client_id, {"Authorization": f"Bearer {key}"} if key else None
        )

    async def submit(self, request: RenderRequest) -> UpstreamHandle:
        options = ComfyUiRouteOptions.parse(request.options)
        template = await self._template(options)
        uploaded = await self._upload_references(request, template.placeholders)
        values = placeholder_values(request, options, template.placeholders, uploaded)
        self._progress.start()  # listening before the run can start
        workflow = template.render(values)
        body: dict[str, Any] = {"prompt": workflow, "client_id": self._client_id}
        if request.request_key:
            # ComfyUI takes the client's prompt_id: a retried attempt finds the run by it.
            body["prompt_id"] = request.request_key
        response = await self._http.request("POST", "/prompt", json=body, idempotent=False)
        if response.status_code == 400:
            raise prompt_rejection(response)
        if not response.is_success:
            raise _http_failure(response, "submit")
        answer = json_object_or_empty(response)
        prompt_id = answer.get("prompt_id")
        if not isinstance(prompt_id, str) or not prompt_id:
            raise ProviderRetriableError("ComfyUI queued the workflow but returned no prompt_id")
        if answer.get("node_errors"):
            # Outputs that failed validation are skipped; the valid ones still run.
            log.warning(
                "comfyui_node_errors", prompt_id=prompt_id, node_errors=answer["node_errors"]
            )
        self._progress.expect(prompt_id, step_nodes(workflow))
        return {"prompt_id": prompt_id}

    async def find(self, request: RenderRequest) -> UpstreamHandle | None:
        """The run queued under our request key: in the history, or still in the queue."""
        prompt_id = request.request_key
        if not prompt_id:
            return None
        if await self._history_entry(prompt_id) is not None:
            return {"prompt_id": prompt_id}
        if await self._queue_state(prompt_id) is not None:
            return {"prompt_id": prompt_id}
        return None

    async def poll(self, handle: UpstreamHandle, request: RenderRequest) -> Progress | RenderResult:
        prompt_id = handle.get("prompt_id")
        if not isinstance(prompt_id, str) or not prompt_id:
            raise ProviderRetriableError("comfyui handle lacks prompt_id", resubmit=True)
        self._progress.start()
        entry = await self._history_entry(prompt_id)
        if entry is None:
            state, place = await self._queue_place(prompt_id)
            if state == "running":
                return Progress(fraction=self._progress.fraction(prompt_id), status="processing")
            if state == "pending":
                return Progress(status="queued", queue_position=place)
            entry = await self._history_entry(prompt_id)  # it may have just finished
            if entry is None:
                raise ProviderRetriableError(
                    f"ComfyUI no longer knows prompt {prompt_id} (restarted or history "
                    "cleared); queueing it again",
                    0.0,
                    resubmit=True,
                )
        self._progress.forget(prompt_id)
        status = entry.get("status")
        if isinstance(status, dict) and status.get("status_str") == "error":
            raise execution_failure(status)
        outputs = entry.get("outputs")
        options = ComfyUiRouteOptions.parse(request.options)
        files = output_files(outputs if isinstance(outputs, dict) else {}, options.output_node)
        if not files:
            raise ProviderRejectedError("the ComfyUI workflow finished without output files")
        return RenderResult([await self._download(ref) for ref in files])

    async def aclose(self) -> None:
        await self._progress.aclose()
        await super().aclose()

    async def cancel(self, handle: UpstreamHandle) -> None:
        prompt_id = handle.get("prompt_id")
        if not isinstance(prompt_id, str) or not prompt_id:
            return
        try:
            state = await self._queue_state(prompt_id)
            if state == "pending":
                await self._best_effort("POST", "/queue", {"delete": [prompt_id]}, prompt_id)
                # `delete` touches pending runs only: it may have started meanwhile.
                state = await self._queue_state(prompt_id)
            if state == "running":
                await self._best_effort("POST", "/interrupt", {"prompt_id": prompt_id}, prompt_id)
        except ProviderError as exc:
            log.warning("comfyui_cancel_failed", prompt_id=prompt_id, error=exc.message)

    # -- templates and references ------------------------------------------------------

    async def _template(self, options: ComfyUiRouteOptions) -> WorkflowTemplate:
        if options.workflow_json is not None:
            return WorkflowTemplate.parse(options.workflow_json, "route option workflow_json")
        if options.workflow is None:
            return builtin_template()
        return await asyncio.to_thread(self._file_template, options.workflow)

    def _file_template(self, workflow: str) -> WorkflowTemplate:
        path = Path(workflow).expanduser()
        try:
            stat = path.stat()
            key = (stat.st_mtime_ns, stat.st_size)
            cached = self._file_templates.get(str(path))
            if cached is not None and cached[0] == key:
                return cached[1]
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ProviderFatalError(f"comfyui workflow {path} cannot be read: {exc}") from None
        template = WorkflowTemplate.parse(text, str(path))
        self._file_templates[str(path)] = (key, template)
        return template

    async def _upload_references(
        self, request: RenderRequest, placeholders: frozenset[str]
    ) -> dict[str, str]:
        """Upload the reference images the template asks for; placeholder → file name."""
        uploaded: dict[str, str] = {}
        for name, index in REFERENCE_PLACEHOLDERS.items():
            if name not in placeholders:
                continue
            given = max(
                len(request.reference_images), len(request.params.get("reference_images") or [])
            )
            if index >= given:
                raise ProviderRejectedError(
                    f"this model's workflow needs {index + 1} reference image(s)"
                )
            ref = request.reference_images[index] if index < len(request.reference_images) else None
            if ref is None or ref.data is None:
                # ComfyUI loads references from its input folder: only the bytes can go there.
                raise ProviderRejectedError(f"reference image {index + 1} could not be fetched")
            content_type = ref.content_type or sniff_image_type(ref.data) or "image/png"
            extension = (mimetypes.guess_extension(content_type) or ".png").lstrip(".")
            filename = f"vivix-{request.generation_id}-{index + 1}.{extension}"
            response = await self._http.request(
                "POST",
                "/upload/image",
                # Same name + overwrite: a repeated upload replaces, so retrying is safe.
                idempotent=True,
                files=[
                    ("image", (filename, ref.data, content_type)),
                    ("type", (None, "input")),
                    ("overwrite", (None, "true")),
                ],
            )
            if not response.is_success:
                raise _http_failure(response, "reference upload")
            answer = json_object_or_empty(response)
            stored = str(answer.get("name") or filename)
            subfolder = str(answer.get("subfolder") or "")
            uploaded[name] = f"{subfolder}/{stored}" if subfolder else stored
        return uploaded

    # -- status ------------------------------------------------------------------------

    async def _history_entry(self, prompt_id: str) -> dict[str, Any] | None:
        response = await self._http.request("GET", f"/history/{quote(prompt_id, safe='')}")
        if not response.is_success:
            raise _http_failure(response, "history")
        entry = json_object_or_empty(response).get(prompt_id)
        return entry if isinstance(entry, dict) else None

    async def _queue_state(self, prompt_id: str) -> str | None:
        """ "running", "pending", or None when the queue doesn't hold the run."""
        return (await self._queue_place(prompt_id))[0]

    async def _queue_place(self, prompt_id: str) -> tuple[str | None, int | None]:
        """The run's state in `/queue` and, while pending, its place (1 = next): the
        server runs the lowest `number` first, and lists pending runs in no set order."""
        response = await self._http.request("GET", "/queue")
        if not response.is_success:
            raise _http_failure(response, "queue")
        queue = json_object_or_empty(response)
        for state, key in (("running", "queue_running"), ("pending", "queue_pending")):
            items = queue.get(key)
            items = items if isinstance(items, list) else []
            ours = next((item for item in items if _queue_item_id(item) == prompt_id), None)
            if ours is None:
                continue
            number = _queue_item_number(ours)
            if state == "running" or number is None:
                return state, None
            ahead = [n for n in map(_queue_item_number, items) if n is not None and n < number]
            return state, len(ahead) + 1
        return None, None

    async def _best_effort(
        self, method: str, path: str, body: dict[str, Any], prompt_id: str
    ) -> None:
        response = await self._http.request(method, path, json=body, idempotent=True)
        if not response.is_success:
            log.warning(
                "comfyui_cancel_refused",
                prompt_id=prompt_id,
                path=path,
                status=response.status_code,
            )

    async def _download(self, ref: FileRef) -> OutputFile:
        query = urlencode({"filename": ref.filename, "subfolder": ref.subfolder, "type": ref.type})
        # `download` wants an absolute URL; /view is on the server itself, key included.
        data, content_type = await self._http.download(self._http.url(f"/view?{query}"))
        sniffed = sniff_image_type(data)
        if sniffed:
            content_type = sniffed
        elif content_type in GENERIC_CONTENT_TYPES:
            content_type = mimetypes.guess_type(ref.filename)[0] or "application/octet-stream"
        return probe(OutputFile(data, content_type))


@dataclass(frozen=True, slots=True)
class FileRef:
    filename: str
    subfolder: str
    type: str


@lru_cache(maxsize=1)
def builtin_template() -> WorkflowTemplate:
    resource = importlib.resources.files("vivix.providers.comfyui").joinpath("workflows")
    text = resource.joinpath(BUILTIN_WORKFLOW).read_text(encoding="utf-8")
    return WorkflowTemplate.parse(text, f"shipped {BUILTIN_WORKFLOW}")


def placeholder_values(
    request: RenderRequest,
    options: ComfyUiRouteOptions,
    used: frozenset[str],
    uploaded: Mapping[str, str],
) -> dict[str, Any]:
    """The value of every placeholder the template uses."""
    params = request.params
    video = request.category == "video"
    aspect = str(params.get("aspect_ratio") or ("16:9" if video else "1:1"))
    resolution = str(params.get("resolution") or ("720p" if video else "1K"))
    width, height = pixel_size(request.category, aspect, resolution, options.size_multiple)
    seed = params.get("seed")
    values: dict[str, Any] = {
        "prompt": str(params.get("prompt") or ""),
        "negative_prompt": str(params.get("negative_prompt") or ""),
        # The worker records a seed; without one ComfyUI would get the template's literal.
        "seed": seed
        if isinstance(seed, int) and not isinstance(seed, bool)
        else secrets.randbelow(2**32),
        "width": width,
        "height": height,
        "number_results": int(params.get("number_results") or 1),
        "aspect_ratio": aspect,
        "resolution": resolution,
        "fps": options.fps,
        **uploaded,
    }
    if used & {"duration", "frames"}:
        duration = params.get("duration")
        if not isinstance(duration, int | float) or isinstance(duration, bool):
            raise ProviderFatalError(
                "the comfyui workflow uses {{duration}}/{{frames}} but the model has no duration param"
            )
        values["duration"] = int(duration)
        values["frames"] = round(duration * options.fps) + options.extra_frames
    return values


def output_files(outputs: dict[str, Any], output_node: str | None) -> list[FileRef]:
    """The result files: the chosen node's, else every saved ("output") file, else any."""
    if output_node is not None:
        node = outputs.get(output_node)
        if not isinstance(node, dict):
            raise ProviderFatalError(
                f"comfyui route option output_node={output_node!r} produced no outputs "
                f"(nodes with outputs: {', '.join(outputs) or 'none'})"
            )
        return _files_of(node)
    refs = [ref for node in outputs.values() if isinstance(node, dict) for ref in _files_of(node)]
    saved = [ref for ref in refs if ref.type == "output"]
    return saved or refs


def prompt_rejection(response: httpx.Response) -> ProviderError:
    """A 400 from POST /prompt: the graph was refused before it was queued."""
    body = json_object_or_empty(response)
    error = body.get("error")
    error_type = ""
    summary = ""
    if isinstance(error, dict):
        error_type = str(error.get("type") or "")
        summary = " ".join(str(error.get(key) or "") for key in ("message", "details")).strip()
    elif error is not None:
        summary = str(error)  # older servers answered a bare string
    problems = []
    node_errors = body.get("node_errors")
    if isinstance(node_errors, dict):
        for node_id, info in node_errors.items():
            if not isinstance(info, dict):
                continue
            for item in info.get("errors") or []:
                if isinstance(item, dict):
                    detail = f" ({item['details']})" if item.get("details") else ""
                    problems.append(
                        f"#{node_id} {info.get('class_type', '?')}: {item.get('message', '')}{detail}"
                    )
    text = f"ComfyUI refused the workflow ({error_type or 'HTTP 400'}): {summary or 'no details'}"
    if problems:
        text += "; " + "; ".join(problems)
    if error_type in FATAL_PROMPT_ERRORS:
        return ProviderFatalError(text)
    if _mentions(text, CONTENT_MARKERS):
        return ProviderRejectedError(text, content=True)
    return ProviderRejectedError(text)


def execution_failure(status: dict[str, Any]) -> ProviderError:
    """A finished run with `status_str: "error"` (rule in the module docstring)."""
    messages = status.get("messages")
    events: dict[str, dict[str, Any]] = {}
    for message in messages if isinstance(messages, list) else []:
        if isinstance(message, list | tuple) and len(message) == 2 and isinstance(message[1], dict):
            events[str(message[0])] = message[1]
    if "execution_interrupted" in events:
        return ProviderRejectedError("canceled upstream: the ComfyUI run was interrupted")
    error = events.get("execution_error")
    if error is None:
        return ProviderRejectedError("ComfyUI reported a failed run without details")
    exception_type = str(error.get("exception_type") or "")
    exception_message = str(error.get("exception_message") or "").strip()
    text = (
        f"ComfyUI failed in node #{error.get('node_id')} {error.get('node_type') or ''}: "
        f"{exception_type}: {exception_message}"
    )
    if _mentions(f"{exception_type} {exception_message}", OOM_MARKERS) or _mentions(
        exception_type, TRANSIENT_EXCEPTION_MARKERS
    ):
        return ProviderRetriableError(text, resubmit=True)
    if _mentions(exception_message, CONTENT_MARKERS):
        return ProviderRejectedError(text, content=True)
    return ProviderRejectedError(text)


def _http_failure(response: httpx.Response, action: str) -> ProviderError:
    text = f"comfyui {action} failed with HTTP {response.status_code}: {_snippet(response)}"
    status = response.status_code
    if status in (401, 403):
        return ProviderFatalError(text)  # the proxy in front of ComfyUI refused our key
    if status in (404, 405):
        return ProviderFatalError(text)  # no ComfyUI API at the configured base URL
    if status in (408, 409, 425, 429) or status >= 500:
        return ProviderRetriableError(text, parse_retry_after(response.headers.get("retry-after")))
    return ProviderRejectedError(text)


def _collect_placeholders(value: Any, found: set[str]) -> None:
    if isinstance(value, str):
        found.update(PLACEHOLDER.findall(value))
    elif isinstance(value, list):
        for item in value:
            _collect_placeholders(item, found)
    elif isinstance(value, dict):
        for item in value.values():
            _collect_placeholders(item, found)


def _substitute(value: Any, values: Mapping[str, Any]) -> Any:
    if isinstance(value, str):
        whole = PLACEHOLDER.fullmatch(value)
        if whole is not None:
            return values[whole.group(1)]  # typed: "{{seed}}" becomes an integer
        return PLACEHOLDER.sub(lambda match: str(values[match.group(1)]), value)
    if isinstance(value, list):
        return [_substitute(item, values) for item in value]
    if isinstance(value, dict):
        return {key: _substitute(item, values) for key, item in value.items()}
    return value


def _files_of(node: dict[str, Any]) -> list[FileRef]:
    refs = []
    for key in OUTPUT_FILE_KEYS:
        items = node.get(key)
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and isinstance(item.get("filename"), str):
                refs.append(
                    FileRef(
                        filename=item["filename"],
                        subfolder=str(item.get("subfolder") or ""),
                        type=str(item.get("type") or "output"),
                    )
                )
    return refs


def _queue_item_id(item: Any) -> str | None:
    if isinstance(item, list | tuple) and len(item) > 1:
        return str(item[1])
    return None


def _queue_item_number(item: Any) -> float | None:
    if isinstance(item, list | tuple) and item:
        number = item[0]
        if isinstance(number, int | float) and not isinstance(number, bool):
            return number
    return None


def _positive_int(options: dict[str, Any], key: str, default: int, *, minimum: int = 1) -> int:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ProviderFatalError(f"comfyui route option {key} must be an integer >= {minimum}")
    return value


def _mentions(text: str, markers: tuple[str, ...]) -> bool:
    lowered = text.lower()
    return any(marker in lowered for marker in markers)


def _snippet(response: httpx.Response, limit: int = 300) -> str:
    return response.text[:limit].replace("\n", " ") or "<empty body>"
