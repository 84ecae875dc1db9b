"""A fake Runware REST API that speaks Runware's public protocol, for adapter and
end-to-end tests. Use it through `httpx.ASGITransport(app=fake.app)` or on a real socket
with `async with fake.serve() as base_url:`; file URLs are built from the request's own
base URL, so both work.

Protocol it follows (runware.ai/docs: "Connection & Authentication", "Image Inference
API", "Task Polling", "Errors"):
- one endpoint, `POST /v1`, whose body is a JSON array of task objects; auth is
  `Authorization: Bearer <key>` or a leading `{"taskType": "authentication", "apiKey"}`
  task; a wrong key → 401 `{"errors": [{"code": "invalidApiKey", ...}]}`.
- `imageInference` / `videoInference` tasks are validated (taskUUID, model, prompt,
  width/height divisible by 64 within 128..2048, numberResults, seed >= 1) and answered
  with 400 `{"errors": [{"code", "message", "parameter", "taskType", "taskUUID"}]}` when
  invalid. `deliveryMethod: "async"` answers an acknowledgement `{"data": [{"taskType",
  "taskUUID"}]}`; `sync` (the default) answers the finished results.
- `getResponse` answers one `data` item per generation, `status: "processing"` until the
  job is done, then `status: "success"` with `imageUUID`/`imageURL` (or `imageBase64Data`
  / `imageDataURI` per `outputType`), `seed`, `cost` (with `includeCost`) and
  `NSFWContent` when flagged; failed jobs answer `{"errors": [{..., "status": "error"}]}`.
  A task the fake doesn't know (never submitted, or forgotten) → 404 with code
  `taskNotFound` (undocumented upstream; the name Runware's SDKs use).

Output files are served without auth (like Runware's CDN) from `/files/...`.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.fal import serve_on_loopback
from tests.fakes.media import mp4_bytes, png_bytes

Failure = Literal["content", "provider", "validation", "nsfw"]
Endpoint = Literal["submit", "poll", "files"]
INFERENCE_TASKS = {"imageInference": "image", "videoInference": "video"}


@dataclass
class InjectedFault:
    status: int
    retry_after: str | None
    body: dict[str, Any]


@dataclass
class RunwareTask:
    task: dict[str, Any]
    task_uuid: str
    task_type: str
    results: int
    failure: Failure | None
    polls_before_done: int
    stagger: bool
    seconds_before_done: float | None = None
    started: float = field(default_factory=time.monotonic)
    polls: int = 0
    forgotten: bool = False
    items: list[dict[str, Any]] = field(default_factory=list)


class FakeRunware:
    """In-memory Runware. Scenario knobs (read at submit time, per task): `polls_before_done`
    (getResponse answers `processing` that many times; huge = never finishes) or
    `seconds_before_done` (the task renders that long, whatever the polls), `stagger`
    (then one more result per poll), `failure`, `submit_delay_s` (answer the submit late,
    after accepting it), `known_models`. `inject()` queues HTTP faults (e.g. 429 with
    Retry-After, 503) in front of an endpoint; `forget()` drops tasks.

    Observations: `submissions` (accepted inference tasks) and `submissions_by_prompt`,
    `submit_attempts`, `received` (accepted task objects), `auth_modes` ("header" | "task" per request), `poll_counts`.
    """

    image_size = (64, 48)
    video_size = (64, 36)

    def __init__(self, api_key: str = "rw-test-key", *, polls_before_done: int = 1) -> None:
        self.api_key = api_key
        self.polls_before_done = polls_before_done
        # When set, a task renders for this long (wall clock) instead of for a poll count.
        self.seconds_before_done: float | None = None
        self.stagger = False
        self.failure: Failure | None = None
        self.submit_delay_s = 0.0
        self.known_models: set[str] | None = None
        self.tasks: dict[str, RunwareTask] = {}
        self.files: dict[str, tuple[bytes, str]] = {}
        self.submissions = 0
        self.submissions_by_prompt: Counter[str] = Counter()
        self.submit_attempts = 0
        self.received: list[dict[str, Any]] = []
        self.auth_modes: list[str] = []
        self._faults: dict[str, deque[InjectedFault]] = defaultdict(deque)
        self.app = Starlette(
            routes=[
                Route("/v1", self._api, methods=["POST"]),
                Route("/files/{name}", self._file, methods=["GET"]),
            ]
        )

    def inject(
        self,
        endpoint: Endpoint,
        status: int,
        *,
        times: int = 1,
        retry_after: str | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        """Answer the next `times` calls to `endpoint` with `status` (after auth)."""
        default = {
            "errors": [{"code": "internalServerError", "message": f"injected HTTP {status}"}]
        }
        for _ in range(times):
            self._faults[endpoint].append(InjectedFault(status, retry_after, body or default))

    def forget(self, task_uuid: str | None = None) -> None:
        """Drop one task (or all): getResponse no longer knows it."""
        for task in self.tasks.values():
            if task_uuid is None or task.task_uuid == task_uuid:
                task.forgotten = True

    @property
    def poll_counts(self) -> dict[str, int]:
        return {task_uuid: task.polls for task_uuid, task in self.tasks.items()}

    @asynccontextmanager
    async def serve(self) -> AsyncIterator[str]:
        """Serve the fake with uvicorn on 127.0.0.1 (a free port); yields its base URL."""
        async with serve_on_loopback(self.app) as base_url:
            yield base_url

    # --- endpoint --------------------------------------------------------------------

    async def _api(self, request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, list) or not all(isinstance(task, dict) for task in body):
            return _errors(
                400,
                [_error("invalidPayload", "The request body must be an array of task objects.")],
            )
        tasks: list[dict[str, Any]] = list(body)
        if tasks and tasks[0].get("taskType") == "authentication":
            key, mode = tasks.pop(0).get("apiKey"), "task"
        else:
            header = request.headers.get("authorization", "")
            key, mode = (
                (header[len("Bearer ") :] if header.startswith("Bearer ") else None),
                "header",
            )
        if key != self.api_key:
            return _errors(
                401,
                [
                    _error(
                        "invalidApiKey",
                        "Invalid API key. Get one at https://my.runware.ai/signup",
                        parameter="apiKey",
                        taskType="authentication",
                    )
                ],
            )
        self.auth_modes.append(mode)
        polling = bool(tasks) and all(task.get("taskType") == "getResponse" for task in tasks)
        if not polling:
            self.submit_attempts += 1
        if (fault := self._fault("poll" if polling else "submit")) is not None:
            return fault
        data: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        status = 200
        accepted = False
        for task in tasks:
            task_type = task.get("taskType")
            if task_type == "getResponse":
                code, items, failures = self._get_response(request, task)
            elif task_type in INFERENCE_TASKS:
                code, items, failures = self._start(request, task)
                accepted = accepted or code == 200
            else:
                code, items, failures = (
                    400,
                    [],
                    [
                        _error(
                            "invalidTaskType",
                            f"Invalid value for taskType parameter: {task_type!r}.",
                            parameter="taskType",
                            taskUUID=task.get("taskUUID"),
                        )
                    ],
                )
            data.extend(items)
            errors.extend(failures)
            status = code if status == 200 else status
        if accepted and self.submit_delay_s:
            await asyncio.sleep(self.submit_delay_s)  # accepted, but the answer comes late
        payload: dict[str, Any] = {"data": data}
        if errors:
            payload["errors"] = errors
        return JSONResponse(payload, status_code=status)

    async def _file(self, request: Request) -> Response:
        if (fault := self._fault("files")) is not None:
            return fault
        stored = self.files.get(request.path_params["name"])
        if stored is None:
            return Response(status_code=404)
        return Response(stored[0], media_type=stored[1])

    # --- tasks -----------------------------------------------------------------------

    def _start(
        self, request: Request, task: dict[str, Any]
    ) -> tuple[int, list[dict[str, Any]], list[dict[str, Any]]]:
        problem = self._validate(task)
        if problem is not None:
            return 400, [], [problem]
        task_uuid = str(task["taskUUID"])
        task_type = str(task["taskType"])
        job = RunwareTask(
            task=task,
            task_uuid=task_uuid,
            task_type=task_type,
            results=int(task.get("numberResults", 1)),
            failure=self.failure,
            polls_before_done=self.polls_before_done,
            stagger=self.stagger,
            seconds_before_done=self.seconds_before_done,
        )
        self.tasks[task_uuid] = job
        self.submissions += 1
        self.submissions_by_prompt[str(task.get("positivePrompt"))] += 1
        self.received.append(task)
        if task.get("deliveryMethod", "sync") == "async":
            return 200, [{"taskType": task_type, "taskUUID": task_uuid}], []
        job.polls_before_done = 0  # sync: the answer is the finished job
        return self._answer(request, job, finished=job.results)

    def _get_response(
        self, request: Request, task: dict[str, Any]
    ) -> tuple[int, list[dict[str, Any]], list[dict[str, Any]]]:
        task_uuid = task.get("taskUUID")
        job = self.tasks.get(str(task_uuid))
        if job is None or job.forgotten:
            return (
                404,
                [],
                [
                    _error(
                        "taskNotFound",
                        "No active task was found with the given taskUUID.",
                        parameter="taskUUID",
                        taskType="getResponse",
                        taskUUID=task_uuid,
                    )
                ],
            )
        job.polls += 1
        done_polls = job.polls - job.polls_before_done
        if job.seconds_before_done is not None:
            rendered = time.monotonic() - job.started >= job.seconds_before_done
            finished = job.results if rendered else 0
        elif done_polls <= 0:
            finished = 0
        elif job.stagger:
            finished = min(done_polls, job.results)
        else:
            finished = job.results
        return self._answer(request, job, finished=finished)

    def _answer(
        self, request: Request, job: RunwareTask, *, finished: int
    ) -> tuple[int, list[dict[str, Any]], list[dict[str, Any]]]:
        if finished and job.failure in ("content", "provider", "validation"):
            return 200, [], [self._failure_error(job)]
        self._render(request, job, finished)
        processing = [
            {"taskType": job.task_type, "taskUUID": job.task_uuid, "status": "processing"}
            for _ in range(job.results - finished)
        ]
        return 200, job.items[:finished] + processing, []

    def _render(self, request: Request, job: RunwareTask, count: int) -> None:
        base = str(request.base_url).rstrip("/")
        video = job.task_type == "videoInference"
        seed = int(job.task.get("seed", 1234))
        output_type = job.task.get("outputType", "URL")
        while len(job.items) < count:
            index = len(job.items)
            file_id = str(uuid.uuid4())
            if video:
                data, content_type, extension = mp4_bytes(*self.video_size, 1.0), "video/mp4", "mp4"
                prefix = "video"
            else:
                data = png_bytes(*self.image_size, seed + index)
                content_type, extension, prefix = "image/png", "png", "image"
            item: dict[str, Any] = {
                "taskType": job.task_type,
                "taskUUID": job.task_uuid,
                "status": "success",
                f"{prefix}UUID": file_id,
                "seed": seed + index,
            }
            if output_type == "base64Data":
                item[f"{prefix}Base64Data"] = base64.b64encode(data).decode()
            elif output_type == "dataURI":
                item[f"{prefix}DataURI"] = (
                    f"data:{content_type};base64,{base64.b64encode(data).decode()}"
                )
            else:
                name = f"{file_id}.{extension}"
                self.files[name] = (data, content_type)
                item[f"{prefix}URL"] = f"{base}/files/{name}"
            if job.task.get("includeCost"):
                item["cost"] = 0.0013
            if job.failure == "nsfw" or isinstance(job.task.get("safety"), dict):
                item["NSFWContent"] = job.failure == "nsfw"
            job.items.append(item)

    def _failure_error(self, job: RunwareTask) -> dict[str, Any]:
        if job.failure == "content":
            code, message = (
                "contentPolicyViolation",
                "The request was blocked by the content moderation system.",
            )
        elif job.failure == "provider":
            # The documented example of a failed async task.
            code, message = (
                "timeoutProvider",
                "The external provider did not respond within the timeout window. "
                "The request was automatically terminated.",
            )
        else:
            code, message = "invalidSeedImage", "The seed image could not be processed."
        return {
            "code": code,
            "status": "error",
            "message": message,
            "documentation": "https://runware.ai/docs/image-inference/api-reference",
            "taskUUID": job.task_uuid,
            "taskType": job.task_type,
        }

    def _validate(self, task: dict[str, Any]) -> dict[str, Any] | None:
        task_uuid = task.get("taskUUID")
        task_type = task.get("taskType")

        def invalid(parameter: str, message: str, code: str | None = None) -> dict[str, Any]:
            return _error(
                code or f"invalid{parameter[0].upper()}{parameter[1:]}",
                message,
                parameter=parameter,
                taskType=task_type,
                taskUUID=task_uuid,
            )

        try:
            uuid.UUID(str(task_uuid), version=4)
        except ValueError:
            return invalid(
                "taskUUID", "Invalid value for taskUUID parameter. It must be a UUID v4."
            )
        if task_uuid in self.tasks:
            return invalid("taskUUID", "The taskUUID is already in use.", "duplicateTaskUUID")
        model = task.get("model")
        if not isinstance(model, str) or not model:
            return invalid("model", "Missing model parameter.", "missingModel")
        if self.known_models is not None and model not in self.known_models:
            return invalid("model", f"The model {model} could not be found.", "modelNotFound")
        prompt = task.get("positivePrompt")
        if not isinstance(prompt, str) or not 2 <= len(prompt) <= 3000:
            return invalid(
                "positivePrompt", "The positivePrompt must be between 2 and 3000 characters."
            )
        if task.get("deliveryMethod", "sync") not in ("sync", "async"):
            return invalid("deliveryMethod", "Invalid value for deliveryMethod parameter.")
        if task_type == "imageInference":
            for side in ("width", "height"):
                value = task.get(side)
                if not isinstance(value, int) or value % 64 or not 128 <= value <= 2048:
                    return invalid(
                        side,
                        f"Invalid value for {side} parameter. It must be divisible by 64 and "
                        "between 128 and 2048.",
                    )
        results = task.get("numberResults", 1)
        if not isinstance(results, int) or not 1 <= results <= 20:
            return invalid("numberResults", "The numberResults must be between 1 and 20.")
        seed = task.get("seed")
        if seed is not None and (not isinstance(seed, int) or seed < 1):
            return invalid("seed", "The seed must be an integer of at least 1.")
        return None

    def _fault(self, endpoint: str) -> Response | None:
        queue = self._faults[endpoint]
        if not queue:
            return None
        fault = queue.popleft()
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
        return JSONResponse(fault.body, status_code=fault.status, headers=headers)


def _error(code: str, message: str, **fields: Any) -> dict[str, Any]:
    return {"code": code, "message": message, **{k: v for k, v in fields.items() if v is not None}}


def _errors(status: int, errors: list[dict[str, Any]]) -> Response:
    return JSONResponse({"errors": errors}, status_code=status)
