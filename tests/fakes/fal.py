"""A fake fal.ai queue that speaks fal's public queue protocol, for adapter and end-to-end
tests. Use it through `httpx.ASGITransport(app=fake.app)` or on a real socket with
`async with fake.serve() as base_url:`; every URL it hands out is built from the
request's own base URL, so both work.

Protocol it follows (fal docs, "Queue API"):
- `POST /{model_id}` with header `Authorization: Key <key>` → 200 `{request_id,
  status_url, response_url, cancel_url, queue_position}`; status, result and cancel URLs
  use only the app id (owner/app) even for model ids with an endpoint path.
- `GET .../requests/{id}/status[?logs=1]` → 202 `IN_QUEUE` (with `queue_position`) or
  `IN_PROGRESS` while running, 200 `COMPLETED` when done.
- `GET .../requests/{id}` → the model's answer: 200 output JSON, or its error (422 with a
  `detail` list for validation and content-policy errors, 500 for runner errors, 499
  `client_cancelled` after a cancel).
- `PUT .../requests/{id}/cancel` → 202 `CANCELLATION_REQUESTED`, 400 `ALREADY_COMPLETED`,
  404 `NOT_FOUND`.
- The Platform API's request history (docs "Platform APIs" → requests/by-endpoint), at
  `/v1/models/requests/by-endpoint` (api.fal.ai's path; ASGITransport answers any host):
  `?endpoint_id=` (required) `&start=&end=` (ISO 8601) `&limit=` (≤100) `&cursor=`
  `&expand=payloads` → `{"items": [{"request_id", "endpoint_id", "started_at", "status",
  "json_input"?}], "has_more", "next_cursor"}`, newest first.
- A wrong key → 401 `{"detail": "No user found for Key ID and Secret"}`.

Output files are served (without auth, like fal's CDN) from `/files/...`.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.media import mp3_bytes, mp4_bytes, png_bytes

OutputKind = Literal["image", "video", "audio"]
Failure = Literal["validation", "content", "internal", "nsfw"]
Endpoint = Literal["submit", "status", "result", "cancel", "files", "history"]


@dataclass
class InjectedFault:
    status: int
    retry_after: str | None
    body: dict[str, Any]


@dataclass
class FalJob:
    request_id: str
    model: str
    app_id: str
    input: dict[str, Any]
    kind: OutputKind
    outputs: int
    failure: Failure | None
    polls_before_done: int
    queue_ahead: int = 0
    submitted_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    polls: int = 0
    done: bool = False
    canceled: bool = False
    files: list[str] = field(default_factory=list)


class FakeFal:
    """In-memory fal queue. Scenario knobs (read at submit time, per job):
        `output_kind`, `outputs` (images per job), `polls_before_done` (status checks that
        answer IN_QUEUE/IN_PROGRESS before COMPLETED; huge = never finishes), `failure`,
        `submit_delay_s` (answer the submit late, after accepting it), `queue_ahead` (requests
    ahead in the queue: its first status checks count `queue_position` down to 0; running
    checks return tqdm bars in the logs). `inject()` queues
        HTTP faults (e.g. 429 with Retry-After, 503) in front of an endpoint; `inject_file()`
        replaces the next downloaded files' bytes.

        `submit_gate`: when set, each submit waits for that event before it is answered.

        Observations: `submissions` (accepted submits), `submit_attempts`, `received`
        (accepted input bodies), `received_models`, `poll_counts`, `result_requests`, `cancels`,
        `most_submits_at_once` (submits in progress at the same moment).
    """

    image_size = (64, 48)
    video_size = (64, 36)

    def __init__(
        self,
        api_key: str = "fal-test-key",
        *,
        output_kind: OutputKind = "image",
        outputs: int = 1,
        polls_before_done: int = 1,
        known_models: set[str] | None = None,
        kinds_by_model: dict[str, OutputKind] | None = None,
    ) -> None:
        self.api_key = api_key
        self.output_kind: OutputKind = output_kind
        self.outputs = outputs
        self.polls_before_done = polls_before_done
        self.known_models = known_models
        # What each model produces (a video model answers video); others: `output_kind`.
        self.kinds_by_model = dict(kinds_by_model or {})
        self.failure: Failure | None = None
        self.submit_delay_s = 0.0
        self.queue_ahead = 0  # requests ahead of each new one in fal's queue
        self.submit_gate: asyncio.Event | None = None
        self.submits_now = 0
        self.most_submits_at_once = 0
        self.jobs: dict[str, FalJob] = {}
        self.files: dict[str, tuple[bytes, str]] = {}
        self.submissions = 0
        self.submit_attempts = 0
        self.cancels = 0
        self.result_requests = 0
        self.history_requests = 0
        self.received: list[dict[str, Any]] = []
        self.received_models: list[str] = []
        self._faults: dict[str, deque[InjectedFault]] = defaultdict(deque)
        self._file_replacements: deque[tuple[bytes, str]] = deque()
        self.app = Starlette(
            routes=[
                Route("/files/{name}", self._file, methods=["GET"]),
                Route("/v1/models/requests/by-endpoint", self._history, methods=["GET"]),
                Route("/{app_id:path}/requests/{request_id}/status", self._status, methods=["GET"]),
                Route("/{app_id:path}/requests/{request_id}/cancel", self._cancel, methods=["PUT"]),
                Route("/{app_id:path}/requests/{request_id}", self._result, methods=["GET"]),
                Route("/{model:path}", self._submit, methods=["POST"]),
            ]
        )

    def inject_file(self, data: bytes, content_type: str, *, times: int = 1) -> None:
        """Answer the next `times` file downloads with 200 and these bytes instead of the
        output (a CDN serving an error page, a wrong file, markup labelled as an image)."""
        for _ in range(times):
            self._file_replacements.append((data, content_type))

    def inject(
        self,
        endpoint: Endpoint,
        status: int,
        *,
        times: int = 1,
        retry_after: str | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        """Answer the next `times` calls to `endpoint` with `status` (before any work)."""
        default = {"detail": f"injected HTTP {status}"}
        for _ in range(times):
            self._faults[endpoint].append(InjectedFault(status, retry_after, body or default))

    @property
    def poll_counts(self) -> dict[str, int]:
        return {request_id: job.polls for request_id, job in self.jobs.items()}

    @asynccontextmanager
    async def serve(self) -> AsyncIterator[str]:
        """Serve the fake with uvicorn on 127.0.0.1 (a free port); yields its base URL."""
        async with serve_on_loopback(self.app) as base_url:
            yield base_url

    # --- endpoints -------------------------------------------------------------------

    async def _submit(self, request: Request) -> Response:
        if (refused := self._unauthorized(request)) is not None:
            return refused
        self.submit_attempts += 1
        if (fault := self._fault("submit")) is not None:
            return fault
        self.submits_now += 1
        self.most_submits_at_once = max(self.most_submits_at_once, self.submits_now)
        try:
            if self.submit_gate is not None:
                await self.submit_gate.wait()
            return await self._accept(request)
        finally:
            self.submits_now -= 1

    async def _accept(self, request: Request) -> Response:
        model = request.path_params["model"]
        if self.known_models is not None and model not in self.known_models:
            return JSONResponse({"detail": f"Application '{model}' not found"}, status_code=404)
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return JSONResponse(
                {
                    "detail": [
                        {
                            "loc": ["body"],
                            "msg": "Input should be an object",
                            "type": "model_attributes_type",
                        }
                    ]
                },
                status_code=422,
            )
        request_id = str(uuid.uuid4())
        job = FalJob(
            request_id=request_id,
            model=model,
            app_id=app_id_of(model),
            input=body,
            kind=self.kinds_by_model.get(model, self.output_kind),
            outputs=self.outputs
            if self.kinds_by_model.get(model, self.output_kind) == "image"
            else 1,
            failure=self.failure,
            polls_before_done=self.polls_before_done,
            queue_ahead=self.queue_ahead,
        )
        self.jobs[request_id] = job
        self.submissions += 1
        self.received.append(body)
        self.received_models.append(model)
        if self.submit_delay_s:
            await asyncio.sleep(self.submit_delay_s)  # accepted, but the answer comes late
        urls = self._urls(request, job)
        return JSONResponse(
            {"status": "IN_QUEUE", "request_id": request_id, **urls, "queue_position": 0}
        )

    async def _history(self, request: Request) -> Response:
        if (refused := self._unauthorized(request)) is not None:
            return refused
        if (fault := self._fault("history")) is not None:
            return fault
        query = request.query_params
        endpoint = query.get("endpoint_id")
        if not endpoint:
            return JSONResponse({"detail": "endpoint_id is required"}, status_code=422)
        self.history_requests += 1
        listed = sorted(
            (job for job in self.jobs.values() if job.model == endpoint),
            key=lambda job: job.submitted_at,
            reverse=True,
        )
        if start := query.get("start"):
            listed = [j for j in listed if j.submitted_at >= _instant(start)]
        if end := query.get("end"):
            listed = [j for j in listed if j.submitted_at < _instant(end)]
        offset = int(query.get("cursor") or 0)
        limit = min(100, int(query.get("limit") or 50))
        page = listed[offset : offset + limit]
        more = offset + limit < len(listed)
        payloads = query.get("expand") == "payloads"
        return JSONResponse(
            {
                "items": [
                    {
                        "request_id": job.request_id,
                        "endpoint_id": job.model,
                        "started_at": job.submitted_at.isoformat().replace("+00:00", "Z"),
                        "status": "success" if job.done and not job.failure else "pending",
                        **({"json_input": job.input} if payloads else {}),
                    }
                    for job in page
                ],
                "has_more": more,
                "next_cursor": str(offset + limit) if more else None,
            }
        )

    async def _status(self, request: Request) -> Response:
        if (refused := self._unauthorized(request)) is not None:
            return refused
        if (fault := self._fault("status")) is not None:
            return fault
        job = self._job(request)
        if job is None:
            return JSONResponse({"detail": "Request not found"}, status_code=404)
        job.polls += 1
        urls = self._urls(request, job)
        with_logs = request.query_params.get("logs") in ("1", "true", "True")
        if not job.done and job.polls <= job.polls_before_done:
            if job.polls <= job.queue_ahead + 1:
                # Queued: `queue_position` counts down to 0 (next), no logs yet.
                return JSONResponse(
                    {
                        "status": "IN_QUEUE",
                        "queue_position": job.queue_ahead + 1 - job.polls,
                        "response_url": urls["response_url"],
                    },
                    status_code=202,
                )
            # Running: the logs so far (fal returns them all each time), a model's own
            # line, then a tqdm bar redrawn once per status check, over 10 steps.
            steps = min(10, job.polls - job.queue_ahead - 1)
            lines = ["Loading weights"] + [
                f"{step * 10:3d}%|{'#' * step}{' ' * (10 - step)}| {step}/10 [00:01<00:01, 8.00it/s]"
                for step in range(1, steps + 1)
            ]
            logs = [
                {
                    "message": line,
                    "level": "INFO",
                    "source": "user",
                    "timestamp": "2026-01-01T00:00:00Z",
                }
                for line in lines
            ]
            return JSONResponse(
                {
                    "status": "IN_PROGRESS",
                    "response_url": urls["response_url"],
                    "logs": logs if with_logs else None,
                },
                status_code=202,
            )
        job.done = True
        return JSONResponse(
            {
                "status": "COMPLETED",
                "response_url": urls["response_url"],
                "logs": [] if with_logs else None,
                "metrics": {"inference_time": 0.42},
            }
        )

    async def _result(self, request: Request) -> Response:
        if (refused := self._unauthorized(request)) is not None:
            return refused
        self.result_requests += 1
        if (fault := self._fault("result")) is not None:
            return fault
        job = self._job(request)
        if job is None:
            return JSONResponse({"detail": "Request not found"}, status_code=404)
        if not job.done:
            return JSONResponse({"detail": "Request is still in progress"}, status_code=400)
        if job.canceled:
            return JSONResponse(
                {
                    "detail": "The request was cancelled by the client.",
                    "error_type": "client_cancelled",
                },
                status_code=499,
                headers={"X-Fal-Error-Type": "client_cancelled"},
            )
        if job.failure == "validation":
            return JSONResponse(
                {
                    "detail": [
                        {
                            "loc": ["body", "image_size"],
                            "msg": "Input should be 'square_hd', 'square' or 'landscape_16_9'",
                            "type": "enum",
                            "url": "https://docs.fal.ai/errors#enum",
                        }
                    ]
                },
                status_code=422,
                headers={"X-Fal-Retryable": "false"},
            )
        if job.failure == "content":
            return JSONResponse(
                {
                    "detail": [
                        {
                            "loc": ["body", "prompt"],
                            "msg": "The content was flagged by a content checker.",
                            "type": "content_policy_violation",
                            "url": "https://docs.fal.ai/errors#content_policy_violation",
                            "input": job.input.get("prompt"),
                            "categories": ["sexual"],
                        }
                    ]
                },
                status_code=422,
                headers={"X-Fal-Retryable": "false"},
            )
        if job.failure == "internal":
            return JSONResponse(
                {
                    "detail": "The runner encountered an internal server error.",
                    "error_type": "runner_server_error",
                },
                status_code=500,
                headers={"X-Fal-Error-Type": "runner_server_error"},
            )
        return JSONResponse(self._output(request, job))

    async def _cancel(self, request: Request) -> Response:
        if (refused := self._unauthorized(request)) is not None:
            return refused
        if (fault := self._fault("cancel")) is not None:
            return fault
        self.cancels += 1
        job = self._job(request)
        if job is None:
            return JSONResponse({"status": "NOT_FOUND"}, status_code=404)
        if job.done:
            return JSONResponse({"status": "ALREADY_COMPLETED"}, status_code=400)
        job.canceled = True
        job.done = True
        return JSONResponse({"status": "CANCELLATION_REQUESTED"}, status_code=202)

    async def _file(self, request: Request) -> Response:
        if (fault := self._fault("files")) is not None:
            return fault
        if self._file_replacements:
            data, content_type = self._file_replacements.popleft()
            return Response(data, media_type=content_type)
        stored = self.files.get(request.path_params["name"])
        if stored is None:
            return Response(status_code=404)
        return Response(stored[0], media_type=stored[1])

    # --- helpers ---------------------------------------------------------------------

    def _unauthorized(self, request: Request) -> Response | None:
        if request.headers.get("authorization") == f"Key {self.api_key}":
            return None
        return JSONResponse({"detail": "No user found for Key ID and Secret"}, status_code=401)

    def _fault(self, endpoint: str) -> Response | None:
        queue = self._faults[endpoint]
        if not queue:
            return None
        fault = queue.popleft()
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
        return JSONResponse(fault.body, status_code=fault.status, headers=headers)

    def _job(self, request: Request) -> FalJob | None:
        job = self.jobs.get(request.path_params["request_id"])
        # Status/result/cancel live under the app id only, as on fal.
        if job is None or request.path_params["app_id"] != job.app_id:
            return None
        return job

    def _urls(self, request: Request, job: FalJob) -> dict[str, str]:
        root = f"{_base(request)}/{job.app_id}/requests/{job.request_id}"
        return {
            "status_url": f"{root}/status",
            "response_url": root,
            "cancel_url": f"{root}/cancel",
        }

    def _output(self, request: Request, job: FalJob) -> dict[str, Any]:
        base = _base(request)
        seed = int(job.input.get("seed", 42))
        if job.kind == "image":
            width, height = self.image_size
            images = []
            for index in range(job.outputs):
                name = f"{job.request_id}-{index}.png"
                self.files[name] = (png_bytes(width, height, seed + index), "image/png")
                images.append(
                    {
                        "url": f"{base}/files/{name}",
                        "content_type": "image/png",
                        "width": width,
                        "height": height,
                    }
                )
            flagged = job.failure == "nsfw"
            return {
                "images": images,
                "seed": seed,
                "has_nsfw_concepts": [flagged] * job.outputs,
                "prompt": job.input.get("prompt", ""),
            }
        if job.kind == "video":
            width, height = self.video_size
            name = f"{job.request_id}.mp4"
            data = mp4_bytes(width, height, 1.0)
            self.files[name] = (data, "video/mp4")
            return {
                "video": {
                    "url": f"{base}/files/{name}",
                    "content_type": "video/mp4",
                    "file_name": name,
                    "file_size": len(data),
                    "width": width,
                    "height": height,
                    "duration": 1.0,
                },
                "seed": seed,
            }
        name = f"{job.request_id}.mp3"
        data = mp3_bytes(1.0)
        self.files[name] = (data, "audio/mpeg")
        return {
            "audio": {
                "url": f"{base}/files/{name}",
                "content_type": "audio/mpeg",
                "file_name": name,
                "file_size": len(data),
            }
        }


def _instant(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def app_id_of(model: str) -> str:
    parts = model.split("/")
    return "/".join(parts[: 3 if parts[0] in ("workflows", "comfy") else 2])


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


@asynccontextmanager
async def serve_on_loopback(app: Any, *, websockets: bool = False) -> AsyncIterator[str]:
    """Run `app` under uvicorn on 127.0.0.1 in this event loop; yields the base URL.
    `websockets`: serve its websocket routes too."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,  # leave the test process's logging alone
        log_level="warning",
        ws="websockets-sansio" if websockets else "none",
        http="h11",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()  # surfaces a start-up failure
            await asyncio.sleep(0.005)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()
