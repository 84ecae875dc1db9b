"""A fake ComfyUI server that speaks ComfyUI's HTTP API (server.py routes), for adapter
and end-to-end tests. Use it through `httpx.ASGITransport(app=fake.app)` or on a real
socket with `async with fake.serve() as base_url:`.

Protocol it follows:
- `POST /prompt` `{"prompt": <API-format graph>, "client_id", "prompt_id"?}` → 200
  `{"prompt_id", "number", "node_errors": {}}`; an invalid graph → 400 `{"error": {"type",
  "message", "details", "extra_info"}, "node_errors": {...}}` with ComfyUI's error types
  (`invalid_prompt` for an unknown node class, `prompt_no_outputs`,
  `prompt_outputs_failed_validation` with per-node `value_not_in_list`,
  `invalid_input_type`, `value_bigger_than_max`, ...).
- One run at a time: a queued run starts when nothing else runs; `GET /history/{id}`
  answers `{}` until the run has finished, then `{id: {"prompt", "outputs", "status":
  {"status_str", "completed", "messages"}, "meta"}}`.
- `GET /queue` → `{"queue_running": [...], "queue_pending": [...]}` of `[number,
  prompt_id, prompt, extra_data, outputs_to_execute]`.
- `POST /queue {"delete": [...]}` removes pending runs; `POST /interrupt` (optionally
  `{"prompt_id"}`: only if that run is running) interrupts the running one, which then
  ends with `status_str: "error"` and an `execution_interrupted` message.
- `GET /view?filename=&subfolder=&type=` serves output files (real PNG/MP4 bytes);
  `POST /upload/image` (multipart) stores reference images for `LoadImage`.
ComfyUI has no auth; with `api_key` set the fake plays an authenticating proxy in front of
it (Bearer token, 401 otherwise).

Runs advance only when their own history is polled: `polls_queued` polls before it can
start, `polls_running` polls while running, then it is finished (huge = never finishes).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from tests.fakes.fal import serve_on_loopback
from tests.fakes.media import mp4_bytes, png_bytes
from tests.fakes.openai_images import parse_multipart

Failure = Literal["error", "oom", "content"]
Endpoint = Literal["prompt", "history", "queue", "interrupt", "view", "upload"]

INT_LIMITS = {
    ("EmptyLatentImage", "width"): (16, 16384),
    ("EmptyLatentImage", "height"): (16, 16384),
    ("EmptyLatentImage", "batch_size"): (1, 4096),
    ("EmptyHunyuanLatentVideo", "width"): (16, 16384),
    ("EmptyHunyuanLatentVideo", "height"): (16, 16384),
    ("EmptyHunyuanLatentVideo", "length"): (1, 16384),
    ("EmptyHunyuanLatentVideo", "batch_size"): (1, 4096),
    ("KSampler", "seed"): (0, 0xFFFFFFFFFFFFFFFF),
    ("KSampler", "steps"): (1, 10000),
}
NODE_CLASSES = frozenset(
    {
        "CheckpointLoaderSimple",
        "CLIPTextEncode",
        "EmptyLatentImage",
        "EmptyHunyuanLatentVideo",
        "KSampler",
        "VAEDecode",
        "LoadImage",
        "SaveImage",
        "PreviewImage",
        "VHS_VideoCombine",
    }
)
OUTPUT_NODES = frozenset({"SaveImage", "PreviewImage", "VHS_VideoCombine"})


@dataclass
class InjectedFault:
    status: int
    retry_after: str | None
    body: dict[str, Any]


@dataclass
class ComfyRun:
    prompt_id: str
    number: int
    graph: dict[str, Any]
    extra_data: dict[str, Any]
    outputs_to_execute: list[str]
    failure: Failure | None
    polls_queued: int
    polls_running: int
    state: Literal["pending", "running", "done", "deleted"] = "pending"
    polls: int = 0
    started_at: int = 0

    def queue_item(self) -> list[Any]:
        return [self.number, self.prompt_id, self.graph, self.extra_data, self.outputs_to_execute]


@dataclass
class StoredFile:
    data: bytes
    content_type: str


class FakeComfyUi:
    """In-memory ComfyUI. Scenario knobs (read at submit time, per run): `polls_queued`,
    `polls_running`, `failure` ("error" | "oom" | "content": how the run ends),
    `submit_delay_s` (answer the submit late, after queueing it), `checkpoints` (what
    CheckpointLoaderSimple accepts). `inject()` queues HTTP faults in front of an
    endpoint; `add_foreign_run()` queues someone else's run; `restart()` forgets every run
    and all history, like a restarted server.

    Observations: `submissions` (queued runs), `submit_attempts`, `received` (the graphs
    as submitted), `client_ids`, `deleted` and `interrupts` (request bodies), `uploads`.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        polls_queued: int = 1,
        polls_running: int = 1,
    ) -> None:
        self.api_key = api_key
        self.polls_queued = polls_queued
        self.polls_running = polls_running
        self.failure: Failure | None = None
        self.submit_delay_s = 0.0
        self.checkpoints = {"sd_xl_base_1.0.safetensors"}
        self.runs: dict[str, ComfyRun] = {}
        self.history: dict[str, dict[str, Any]] = {}
        self.files: dict[tuple[str, str, str], StoredFile] = {}
        self.uploads: dict[str, bytes] = {}
        self.submissions = 0
        self.submit_attempts = 0
        self.received: list[dict[str, Any]] = []
        self.client_ids: list[str | None] = []
        self.deleted: list[str] = []
        self.interrupts: list[dict[str, Any]] = []
        self.sockets: dict[str, WebSocket] = {}  # by clientId
        self._number = 0
        self._counter = 0
        self._faults: dict[str, deque[InjectedFault]] = defaultdict(deque)
        self.app = Starlette(
            routes=[
                Route("/prompt", self._prompt, methods=["POST"]),
                Route("/history/{prompt_id}", self._history, methods=["GET"]),
                Route("/queue", self._queue, methods=["GET"]),
                Route("/queue", self._queue_edit, methods=["POST"]),
                Route("/interrupt", self._interrupt, methods=["POST"]),
                Route("/view", self._view, methods=["GET"]),
                Route("/upload/image", self._upload, methods=["POST"]),
                WebSocketRoute("/ws", self._websocket),
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
        """Answer the next `times` calls to `endpoint` with `status` (before any work)."""
        for _ in range(times):
            self._faults[endpoint].append(
                InjectedFault(status, retry_after, body or {"error": f"injected HTTP {status}"})
            )

    def add_foreign_run(self, *, running: bool) -> str:
        """Someone else's run (another client of the same server), running or pending."""
        run = self._enqueue({"1": {"class_type": "SaveImage", "inputs": {}}}, {}, ["1"])
        run.polls_queued = run.polls_running = 10**9
        if running:
            run.state = "running"
        return run.prompt_id

    def restart(self) -> None:
        """Forget every run and all history, like a restarted ComfyUI."""
        self.runs.clear()
        self.history.clear()

    @property
    def running(self) -> ComfyRun | None:
        return next((run for run in self.runs.values() if run.state == "running"), None)

    @asynccontextmanager
    async def serve(self) -> AsyncIterator[str]:
        """Serve the fake with uvicorn on 127.0.0.1 (a free port); yields its base URL."""
        async with serve_on_loopback(self.app, websockets=True) as base_url:
            yield base_url

    # --- endpoints -------------------------------------------------------------------

    async def _prompt(self, request: Request) -> Response:
        if (refused := self._unauthorized(request)) is not None:
            return refused
        self.submit_attempts += 1
        if (fault := self._fault("prompt")) is not None:
            return fault
        body = await request.json()
        graph = body.get("prompt") if isinstance(body, dict) else None
        if not isinstance(graph, dict):
            return _prompt_error("no_prompt", "No prompt provided", "No prompt provided")
        refused = self._validate(graph)
        if refused is not None:
            return refused
        extra_data = dict(body.get("extra_data") or {})
        if "client_id" in body:
            extra_data["client_id"] = body["client_id"]
        extra_data["create_time"] = int(time.time() * 1000)
        outputs = [node_id for node_id, node in graph.items() if node["class_type"] in OUTPUT_NODES]
        run = self._enqueue(graph, extra_data, outputs, str(body.get("prompt_id") or uuid.uuid4()))
        self.submissions += 1
        self.received.append(graph)
        self.client_ids.append(body.get("client_id"))
        if self.submit_delay_s:
            await asyncio.sleep(self.submit_delay_s)  # queued, but the answer comes late
        return JSONResponse({"prompt_id": run.prompt_id, "number": run.number, "node_errors": {}})

    async def _history(self, request: Request) -> Response:
        if (refused := self._unauthorized(request)) is not None:
            return refused
        if (fault := self._fault("history")) is not None:
            return fault
        prompt_id = request.path_params["prompt_id"]
        run = self.runs.get(prompt_id)
        if run is not None and run.state in ("pending", "running"):
            self._advance(request, run)
            if run.state == "running":
                await self._send_progress(run)
        entry = self.history.get(prompt_id)
        return JSONResponse({prompt_id: entry} if entry is not None else {})

    async def _queue(self, request: Request) -> Response:
        if (refused := self._unauthorized(request)) is not None:
            return refused
        if (fault := self._fault("queue")) is not None:
            return fault
        running = [run.queue_item() for run in self.runs.values() if run.state == "running"]
        # ComfyUI lists its pending heap as stored, in no set order: newest first here,
        # so a client must order by `number` itself.
        pending = sorted(
            (run for run in self.runs.values() if run.state == "pending"),
            key=lambda run: run.number,
            reverse=True,
        )
        return JSONResponse(
            {"queue_running": running, "queue_pending": [run.queue_item() for run in pending]}
        )

    async def _queue_edit(self, request: Request) -> Response:
        if (refused := self._unauthorized(request)) is not None:
            return refused
        body = await request.json()
        if body.get("clear"):
            for run in self.runs.values():
                if run.state == "pending":
                    run.state = "deleted"
        for prompt_id in body.get("delete") or []:
            self.deleted.append(prompt_id)
            run = self.runs.get(prompt_id)
            if run is not None and run.state == "pending":  # the running one stays
                run.state = "deleted"
        return Response(status_code=200)

    async def _interrupt(self, request: Request) -> Response:
        if (refused := self._unauthorized(request)) is not None:
            return refused
        if (fault := self._fault("interrupt")) is not None:
            return fault
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            body = {}
        self.interrupts.append(body)
        running = self.running
        wanted = body.get("prompt_id") if isinstance(body, dict) else None
        if running is not None and (not wanted or wanted == running.prompt_id):
            self._finish(request, running, interrupted=True)
        return Response(status_code=200)

    async def _view(self, request: Request) -> Response:
        if (refused := self._unauthorized(request)) is not None:
            return refused
        if (fault := self._fault("view")) is not None:
            return fault
        query = request.query_params
        key = (query.get("filename", ""), query.get("subfolder", ""), query.get("type", "output"))
        stored = self.files.get(key)
        if stored is None:
            return Response(status_code=404)
        return Response(
            stored.data,
            media_type=stored.content_type,
            headers={"Content-Disposition": f'filename="{key[0]}"'},
        )

    async def _upload(self, request: Request) -> Response:
        if (refused := self._unauthorized(request)) is not None:
            return refused
        if (fault := self._fault("upload")) is not None:
            return fault
        parts = parse_multipart(request.headers.get("content-type", ""), await request.body())
        fields = {part.field: part for part in parts}
        image = fields.get("image")
        if image is None or not image.filename:
            return Response(status_code=400)
        subfolder = fields["subfolder"].data.decode() if "subfolder" in fields else ""
        kind = fields["type"].data.decode() if "type" in fields else "input"
        name = f"{subfolder}/{image.filename}" if subfolder else image.filename
        self.uploads[name] = image.data
        return JSONResponse({"name": image.filename, "subfolder": subfolder, "type": kind})

    # --- runs ------------------------------------------------------------------------

    def _enqueue(
        self,
        graph: dict[str, Any],
        extra_data: dict[str, Any],
        outputs: list[str],
        prompt_id: str | None = None,
    ) -> ComfyRun:
        run = ComfyRun(
            prompt_id=prompt_id or str(uuid.uuid4()),
            number=self._number,
            graph=graph,
            extra_data=extra_data,
            outputs_to_execute=outputs,
            failure=self.failure,
            polls_queued=self.polls_queued,
            polls_running=self.polls_running,
        )
        self._number += 1
        self.runs[run.prompt_id] = run
        return run

    async def _websocket(self, websocket: WebSocket) -> None:
        """`/ws?clientId=`: a `status` message on connect, then the `progress` events of
        runs queued with that client id (and a binary preview frame, as samplers send)."""
        if self.api_key and websocket.headers.get("authorization") != f"Bearer {self.api_key}":
            await websocket.close(code=1008)
            return
        client_id = websocket.query_params.get("clientId") or uuid.uuid4().hex
        await websocket.accept()
        self.sockets[client_id] = websocket
        pending = sum(run.state in ("pending", "running") for run in self.runs.values())
        status = {"status": {"exec_info": {"queue_remaining": pending}}, "sid": client_id}
        await websocket.send_json({"type": "status", "data": status})
        try:
            while True:
                await websocket.receive_text()
        except WebSocketDisconnect:
            pass
        finally:
            if self.sockets.get(client_id) is websocket:
                del self.sockets[client_id]

    async def _send_progress(self, run: ComfyRun) -> None:
        socket = self.sockets.get(str(run.extra_data.get("client_id")))
        if socket is None:
            return
        done = run.polls - run.started_at
        await socket.send_json(
            {"type": "executing", "data": {"node": "3", "prompt_id": run.prompt_id}}
        )
        await socket.send_bytes(b"\x00\x00\x00\x01\x00\x00\x00\x02" + png_bytes(8, 8))
        await socket.send_json(
            {
                "type": "progress",
                "data": {
                    "value": done,
                    "max": run.polls_running,
                    "prompt_id": run.prompt_id,
                    "node": "3",
                },
            }
        )

    def _advance(self, request: Request, run: ComfyRun) -> None:
        run.polls += 1
        if run.state == "pending" and run.polls > run.polls_queued and self.running is None:
            first = min(
                (other for other in self.runs.values() if other.state == "pending"),
                key=lambda other: other.number,
            )
            if first is run:
                run.state, run.started_at = "running", run.polls
        if run.state == "running" and run.polls - run.started_at >= run.polls_running:
            self._finish(request, run)

    def _finish(self, request: Request, run: ComfyRun, *, interrupted: bool = False) -> None:
        run.state = "done"
        now = int(time.time() * 1000)
        messages: list[list[Any]] = [
            ["execution_start", {"prompt_id": run.prompt_id, "timestamp": now}]
        ]
        outputs: dict[str, Any] = {}
        if interrupted:
            messages.append(
                [
                    "execution_interrupted",
                    {
                        "prompt_id": run.prompt_id,
                        "node_id": "3",
                        "node_type": "KSampler",
                        "executed": [],
                        "timestamp": now,
                    },
                ]
            )
        elif run.failure is not None:
            messages.append(["execution_error", _execution_error(run)])
        else:
            outputs = self._render(run)
            messages.append(["execution_success", {"prompt_id": run.prompt_id, "timestamp": now}])
        ok = not interrupted and run.failure is None
        self.history[run.prompt_id] = {
            "prompt": [*run.queue_item(), {}],
            "outputs": outputs,
            "status": {
                "status_str": "success" if ok else "error",
                "completed": ok,
                "messages": messages,
            },
            "meta": {
                node_id: {
                    "node_id": node_id,
                    "display_node": node_id,
                    "parent_node": None,
                    "real_node_id": node_id,
                }
                for node_id in outputs
            },
        }

    def _render(self, run: ComfyRun) -> dict[str, Any]:
        latent = _first(run.graph, ("EmptyLatentImage", "EmptyHunyuanLatentVideo"))
        inputs = latent["inputs"] if latent else {}
        width, height = int(inputs.get("width", 64)), int(inputs.get("height", 64))
        batch = int(inputs.get("batch_size", 1))
        sampler = _first(run.graph, ("KSampler",))
        seed = int(sampler["inputs"].get("seed", 0)) if sampler else 0
        outputs: dict[str, Any] = {}
        for node_id in run.outputs_to_execute:
            node = run.graph[node_id]
            prefix = str(node["inputs"].get("filename_prefix", "ComfyUI"))
            if node["class_type"] == "VHS_VideoCombine":
                rate = float(node["inputs"].get("frame_rate", 8))
                frames = int(inputs.get("length", 8))
                name = self._name(prefix, "mp4")
                self.files[(name, "", "output")] = StoredFile(
                    mp4_bytes(width, height, frames / rate), "video/mp4"
                )
                outputs[node_id] = {
                    "gifs": [
                        {
                            "filename": name,
                            "subfolder": "",
                            "type": "output",
                            "format": "video/h264-mp4",
                            "frame_rate": rate,
                        }
                    ]
                }
                continue
            kind = "temp" if node["class_type"] == "PreviewImage" else "output"
            images = []
            for index in range(batch):
                name = self._name(prefix if kind == "output" else "ComfyUI_temp", "png")
                self.files[(name, "", kind)] = StoredFile(
                    png_bytes(width, height, (seed + index) % 2**31), "image/png"
                )
                images.append({"filename": name, "subfolder": "", "type": kind})
            outputs[node_id] = {"images": images}
        return outputs

    def _name(self, prefix: str, extension: str) -> str:
        self._counter += 1
        return f"{prefix}_{self._counter:05}_.{extension}"

    def _validate(self, graph: dict[str, Any]) -> Response | None:
        for node_id, node in graph.items():
            class_type = node.get("class_type") if isinstance(node, dict) else None
            if class_type not in NODE_CLASSES:
                return _prompt_error(
                    "invalid_prompt",
                    f"Cannot execute because node {class_type} does not exist.",
                    f"Node ID '#{node_id}'",
                )
        outputs = [node_id for node_id, node in graph.items() if node["class_type"] in OUTPUT_NODES]
        if not outputs:
            return _prompt_error("prompt_no_outputs", "Prompt has no outputs", "")
        node_errors: dict[str, Any] = {}
        for node_id, node in graph.items():
            errors = self._node_errors(node["class_type"], node.get("inputs") or {})
            if errors:
                node_errors[node_id] = {
                    "errors": errors,
                    "dependent_outputs": outputs,
                    "class_type": node["class_type"],
                }
        if node_errors:
            return _prompt_error(
                "prompt_outputs_failed_validation",
                "Prompt outputs failed validation",
                "",
                node_errors,
            )
        return None

    def _node_errors(self, class_type: str, inputs: dict[str, Any]) -> list[dict[str, Any]]:
        errors = []
        for name, value in inputs.items():
            limits = INT_LIMITS.get((class_type, name))
            if limits is not None:
                if isinstance(value, bool) or not isinstance(value, int):
                    errors.append(
                        _node_error(
                            "invalid_input_type",
                            "Failed to convert an input value to a INT value",
                            f"{name}, {value}, invalid literal for int()",
                            name,
                            value,
                        )
                    )
                elif value > limits[1]:
                    errors.append(
                        _node_error(
                            "value_bigger_than_max",
                            "Value bigger than max",
                            f"{name}: {value} > {limits[1]}",
                            name,
                            value,
                        )
                    )
                elif value < limits[0]:
                    errors.append(
                        _node_error(
                            "value_smaller_than_min",
                            "Value smaller than min",
                            f"{name}: {value} < {limits[0]}",
                            name,
                            value,
                        )
                    )
        if (
            class_type == "CheckpointLoaderSimple"
            and inputs.get("ckpt_name") not in self.checkpoints
        ):
            errors.append(
                _node_error(
                    "value_not_in_list",
                    "Value not in list",
                    f"ckpt_name: '{inputs.get('ckpt_name')}' not in {sorted(self.checkpoints)}",
                    "ckpt_name",
                    inputs.get("ckpt_name"),
                )
            )
        if class_type == "LoadImage" and inputs.get("image") not in self.uploads:
            errors.append(
                _node_error(
                    "custom_validation_failed",
                    "Custom validation failed for node",
                    f"image - Invalid image file: {inputs.get('image')}",
                    "image",
                    inputs.get("image"),
                )
            )
        return errors

    def _unauthorized(self, request: Request) -> Response | None:
        if self.api_key is None or request.headers.get("authorization") == f"Bearer {self.api_key}":
            return None
        return JSONResponse({"error": "unauthorized"}, status_code=401)

    def _fault(self, endpoint: str) -> Response | None:
        queue = self._faults[endpoint]
        if not queue:
            return None
        fault = queue.popleft()
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
        return JSONResponse(fault.body, status_code=fault.status, headers=headers)


def _first(graph: dict[str, Any], classes: tuple[str, ...]) -> dict[str, Any] | None:
    return next((node for node in graph.values() if node["class_type"] in classes), None)


def _execution_error(run: ComfyRun) -> dict[str, Any]:
    if run.failure == "oom":
        exception_type = "torch.OutOfMemoryError"
        message = (
            "Allocation on device \nThis error means you ran out of memory on your GPU.\n\n"
            "TIPS: If the workflow worked before you might have accidentally set the batch_size "
            "to a large number."
        )
    elif run.failure == "content":
        exception_type = "Exception"
        message = "NSFW content detected by the safety checker; image withheld."
    else:
        exception_type = "RuntimeError"
        message = "mat1 and mat2 shapes cannot be multiplied (154x2048 and 768x320)"
    return {
        "prompt_id": run.prompt_id,
        "node_id": "3",
        "node_type": "KSampler",
        "executed": ["4", "5", "6", "7"],
        "exception_message": message,
        "exception_type": exception_type,
        "traceback": ['  File "execution.py", line 1, in execute\n'],
        "current_inputs": {},
        "current_outputs": [],
        "timestamp": int(time.time() * 1000),
    }


def _node_error(kind: str, message: str, details: str, name: str, value: Any) -> dict[str, Any]:
    return {
        "type": kind,
        "message": message,
        "details": details,
        "extra_info": {"input_name": name, "received_value": value},
    }


def _prompt_error(
    kind: str, message: str, details: str, node_errors: dict[str, Any] | None = None
) -> Response:
    return JSONResponse(
        {
            "error": {"type": kind, "message": message, "details": details, "extra_info": {}},
            "node_errors": node_errors or {},
        },
        status_code=400,
    )
