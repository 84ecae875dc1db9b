"""A fake Replicate API that speaks Replicate's public predictions protocol, for adapter
and end-to-end tests. Use it through `httpx.ASGITransport(app=fake.app)` or on a real
socket with `async with fake.serve() as base_url:`; every URL it hands out is built from
the request's own base URL, so both work.

Protocol it follows (Replicate HTTP API reference):
- `POST /v1/models/{owner}/{name}/predictions` (official models) or `POST /v1/predictions`
  with `version`; header `Authorization: Bearer <token>`; body `{"input": {...}}` → 201
  with the prediction. `Prefer: wait[=N]` holds the answer until the prediction
  finishes - here: answers terminal at once when the scenario needs no polls.
- `GET /v1/predictions/{id}` → the prediction; `starting` → `processing` (tqdm progress in
  `logs`) → `succeeded` (output: a list of URLs for images, one URL for video/audio) or
  `failed` (free-text `error`).
- `POST /v1/predictions/{id}/cancel` → 200 with the prediction, now `canceled` (a finished
  one is returned unchanged); unknown ids → 404.
- `GET /v1/predictions[?created_after=&created_before=]` → `{"previous", "next",
  "results"}`: the account's predictions (input included), newest first, 100 a page,
  `next` the URL of the following page (null on the last).
- Errors are problem details (`application/problem+json`): 401 `Unauthenticated`, 404,
  422 `Input validation failed` with `invalid_fields`, 429 throttled with Retry-After.

Output files are served (without auth, like replicate.delivery) from `/files/...`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.fal import serve_on_loopback
from tests.fakes.media import mp3_bytes, mp4_bytes, png_bytes

OutputKind = Literal["image", "video", "audio"]
Failure = Literal["input", "content", "internal", "invalid_on_create"]
Endpoint = Literal["create", "get", "list", "cancel", "files"]
TERMINAL = frozenset({"succeeded", "failed", "canceled", "aborted"})
FAILURE_ERRORS = {
    "input": "Invalid input: image_input[0] could not be downloaded (HTTP 404)",
    "content": "The input or output was flagged as sensitive. Please try again with different inputs. (E005)",
    "internal": "Prediction failed for an unknown reason. Please try again. (E1000)",
}


@dataclass
class InjectedFault:
    status: int
    retry_after: str | None
    body: dict[str, Any]


@dataclass
class FakePrediction:
    id: str
    model: str
    version: str
    input: dict[str, Any]
    kind: OutputKind
    outputs: int
    failure: Failure | None
    polls_before_done: int
    created_at: str
    status: str = "starting"
    polls: int = 0
    logs: str = ""
    output: Any = None
    error: str | None = None
    completed_at: str | None = None
    files: list[str] = field(default_factory=list)


class FakeReplicate:
    """In-memory Replicate. Scenario knobs (read at create time, per prediction):
    `output_kind`, `outputs` (images per prediction), `polls_before_done` (GETs that
    answer starting/processing before the prediction finishes; huge = never), `failure`,
    `create_delay_s` (answer the create late, after accepting it), `data_removed` (finished
    predictions answer with their output deleted, as after Replicate's retention period).
    `inject()` queues HTTP faults (e.g. 429 with Retry-After, 503) in front of an endpoint.

    Observations: `submissions` (accepted creates), `submit_attempts`, `received` (create
    bodies), `received_paths`, `prefer_headers`, `poll_counts`, `cancels`.
    """

    image_size = (64, 48)
    video_size = (64, 36)
    PAGE_SIZE = 100  # predictions per page of the list, as on Replicate

    def __init__(
        self,
        api_token: str = "r8_test_token",
        *,
        output_kind: OutputKind = "image",
        outputs: int = 1,
        polls_before_done: int = 1,
        known_models: set[str] | None = None,
        kinds_by_model: dict[str, OutputKind] | None = None,
    ) -> None:
        self.api_token = api_token
        self.output_kind: OutputKind = output_kind
        self.outputs = outputs
        self.polls_before_done = polls_before_done
        self.known_models = known_models
        # What each model produces (a video model answers video); others: `output_kind`.
        self.kinds_by_model = dict(kinds_by_model or {})
        self.failure: Failure | None = None
        self.create_delay_s = 0.0
        self.data_removed = False
        self.predictions: dict[str, FakePrediction] = {}
        self.files: dict[str, tuple[bytes, str]] = {}
        self.submissions = 0
        self.submit_attempts = 0
        self.cancels = 0
        self.list_requests = 0
        self.received: list[dict[str, Any]] = []
        self.received_paths: list[str] = []
        self.prefer_headers: list[str | None] = []
        self._faults: dict[str, deque[InjectedFault]] = defaultdict(deque)
        self.app = Starlette(
            routes=[
                Route("/files/{name}", self._file, methods=["GET"]),
                Route(
                    "/v1/models/{owner}/{name}/predictions", self._create_official, methods=["POST"]
                ),
                Route("/v1/predictions", self._create_version, methods=["POST"]),
                Route("/v1/predictions", self._list, methods=["GET"]),
                Route("/v1/predictions/{id}", self._get, methods=["GET"]),
                Route("/v1/predictions/{id}/cancel", self._cancel, methods=["POST"]),
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
        if body is None:
            if status == 429:
                body = {
                    "title": "Request was throttled.",
                    "detail": "Request was throttled. Expected available in 1 second.",
                    "status": 429,
                }
            else:
                body = {
                    "title": "Service unavailable",
                    "detail": f"injected HTTP {status}",
                    "status": status,
                }
        for _ in range(times):
            self._faults[endpoint].append(InjectedFault(status, retry_after, body))

    @property
    def poll_counts(self) -> dict[str, int]:
        return {prediction_id: p.polls for prediction_id, p in self.predictions.items()}

    @asynccontextmanager
    async def serve(self) -> AsyncIterator[str]:
        """Serve the fake with uvicorn on 127.0.0.1 (a free port); yields its base URL."""
        async with serve_on_loopback(self.app) as base_url:
            yield base_url

    # --- endpoints -------------------------------------------------------------------

    async def _create_official(self, request: Request) -> Response:
        model = f"{request.path_params['owner']}/{request.path_params['name']}"
        return await self._create(request, model=model, version="hidden")

    async def _create_version(self, request: Request) -> Response:
        return await self._create(request, model=None, version=None)

    async def _create(
        self, request: Request, *, model: str | None, version: str | None
    ) -> Response:
        if (refused := self._unauthorized(request)) is not None:
            return refused
        self.submit_attempts += 1
        if (fault := self._fault("create")) is not None:
            return fault
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
            return _problem(
                422, "Input validation failed", "- input: Invalid type. Expected: object"
            )
        if model is None:
            version = body.get("version")
            if not isinstance(version, str) or not version:
                return _problem(422, "Input validation failed", "- version: version is required")
            model = "community/model"
        if self.known_models is not None and model not in self.known_models:
            return _problem(404, "Not found", "The requested resource could not be found.")
        if self.failure == "invalid_on_create":
            return _problem(
                422,
                "Input validation failed",
                '- input.aspect_ratio: aspect_ratio must be one of the following: "1:1", "16:9"',
                invalid_fields=[
                    {
                        "type": "enum",
                        "field": "input.aspect_ratio",
                        "description": 'aspect_ratio must be one of the following: "1:1", "16:9"',
                    }
                ],
            )
        prediction = FakePrediction(
            id=uuid.uuid4().hex[:26],
            model=model,
            version=version or "hidden",
            input=body["input"],
            kind=self.kinds_by_model.get(model, self.output_kind),
            outputs=self.outputs
            if self.kinds_by_model.get(model, self.output_kind) == "image"
            else 1,
            failure=self.failure,
            polls_before_done=self.polls_before_done,
            created_at=_now(),
        )
        self.predictions[prediction.id] = prediction
        self.submissions += 1
        self.received.append(body)
        self.received_paths.append(request.url.path)
        prefer = request.headers.get("prefer")
        self.prefer_headers.append(prefer)
        if prefer and prefer.startswith("wait") and prediction.polls_before_done == 0:
            self._finish(request, prediction)  # sync mode: done within the wait
        if self.create_delay_s:
            await asyncio.sleep(self.create_delay_s)  # accepted, but the answer comes late
        return JSONResponse(self._json(request, prediction), status_code=201)

    async def _list(self, request: Request) -> Response:
        """`GET /v1/predictions`: every prediction, newest first, `PAGE_SIZE` a page with a
        `next` URL (a cursor); `created_after` / `created_before` (ISO 8601) filter."""
        if (refused := self._unauthorized(request)) is not None:
            return refused
        if (fault := self._fault("list")) is not None:
            return fault
        query = request.query_params
        after, before = query.get("created_after"), query.get("created_before")
        listed = sorted(self.predictions.values(), key=lambda p: p.created_at, reverse=True)
        if after:
            listed = [p for p in listed if _instant(p.created_at) >= _instant(after)]
        if before:
            listed = [p for p in listed if _instant(p.created_at) < _instant(before)]
        start = int(query.get("cursor") or 0)
        page = listed[start : start + self.PAGE_SIZE]
        more = start + self.PAGE_SIZE < len(listed)
        self.list_requests += 1
        next_url = None
        if more:
            next_url = str(request.url.include_query_params(cursor=start + self.PAGE_SIZE))
        return JSONResponse(
            {
                "previous": None,
                "next": next_url,
                "results": [self._json(request, p) for p in page],
            }
        )

    async def _get(self, request: Request) -> Response:
        if (refused := self._unauthorized(request)) is not None:
            return refused
        if (fault := self._fault("get")) is not None:
            return fault
        prediction = self.predictions.get(request.path_params["id"])
        if prediction is None:
            return _problem(404, "Not found", "The requested resource could not be found.")
        prediction.polls += 1
        if prediction.status not in TERMINAL:
            if prediction.polls <= prediction.polls_before_done:
                prediction.status = "starting" if prediction.polls == 1 else "processing"
                done = prediction.polls * 10 // max(prediction.polls_before_done, 1)
                prediction.logs = f"Using seed: 1\n{done * 10:3d}%|{'#' * done}{' ' * (10 - done)}| {done}/10 [00:01<00:01,  8.00it/s]"
            else:
                self._finish(request, prediction)
        return JSONResponse(self._json(request, prediction))

    async def _cancel(self, request: Request) -> Response:
        if (refused := self._unauthorized(request)) is not None:
            return refused
        if (fault := self._fault("cancel")) is not None:
            return fault
        self.cancels += 1
        prediction = self.predictions.get(request.path_params["id"])
        if prediction is None:
            return _problem(404, "Not found", "The requested resource could not be found.")
        if prediction.status not in TERMINAL:
            prediction.status = "canceled"
            prediction.completed_at = _now()
        return JSONResponse(self._json(request, prediction))

    async def _file(self, request: Request) -> Response:
        if (fault := self._fault("files")) is not None:
            return fault
        stored = self.files.get(request.path_params["name"])
        if stored is None:
            return Response(status_code=404)
        return Response(stored[0], media_type=stored[1])

    # --- helpers ---------------------------------------------------------------------

    def _unauthorized(self, request: Request) -> Response | None:
        header = request.headers.get("authorization", "")
        # Bearer is the documented scheme; Replicate still accepts the older Token.
        if header in (f"Bearer {self.api_token}", f"Token {self.api_token}"):
            return None
        return _problem(401, "Unauthenticated", "You did not pass a valid authentication token")

    def _fault(self, endpoint: str) -> Response | None:
        queue = self._faults[endpoint]
        if not queue:
            return None
        fault = queue.popleft()
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
        return JSONResponse(
            fault.body,
            status_code=fault.status,
            headers=headers,
            media_type="application/problem+json",
        )

    def _finish(self, request: Request, prediction: FakePrediction) -> None:
        prediction.completed_at = _now()
        prediction.logs += "\n100%|##########| 10/10 [00:02<00:00,  8.00it/s]"
        if prediction.failure in FAILURE_ERRORS:
            prediction.status = "failed"
            prediction.error = FAILURE_ERRORS[prediction.failure]
            return
        prediction.status = "succeeded"
        base = str(request.base_url).rstrip("/")
        seed = int(prediction.input.get("seed", 7))
        if prediction.kind == "image":
            width, height = self.image_size
            urls = []
            for index in range(prediction.outputs):
                name = f"{prediction.id}-out-{index}.png"
                self.files[name] = (png_bytes(width, height, seed + index), "image/png")
                urls.append(f"{base}/files/{name}")
            prediction.output = urls
        elif prediction.kind == "video":
            name = f"{prediction.id}-output.mp4"
            self.files[name] = (mp4_bytes(*self.video_size, 1.0), "video/mp4")
            prediction.output = f"{base}/files/{name}"
        else:
            name = f"{prediction.id}-output.mp3"
            self.files[name] = (mp3_bytes(1.0), "audio/mpeg")
            prediction.output = f"{base}/files/{name}"

    def _json(self, request: Request, prediction: FakePrediction) -> dict[str, Any]:
        root = f"{str(request.base_url).rstrip('/')}/v1/predictions/{prediction.id}"
        removed = self.data_removed and prediction.status in TERMINAL
        return {
            "id": prediction.id,
            "model": prediction.model,
            "version": prediction.version,
            "input": prediction.input,
            "logs": prediction.logs,
            "output": None if removed else prediction.output,
            "data_removed": removed,
            "error": prediction.error,
            "status": prediction.status,
            "created_at": prediction.created_at,
            "started_at": prediction.created_at if prediction.polls else None,
            "completed_at": prediction.completed_at,
            "urls": {
                "get": root,
                "cancel": f"{root}/cancel",
                "web": f"https://replicate.com/p/{prediction.id}",
            },
            "metrics": {"predict_time": 0.5} if prediction.status in TERMINAL else {},
        }


def _problem(status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    return JSONResponse(
        {"title": title, "detail": detail, "status": status, **extra},
        status_code=status,
        media_type="application/problem+json",
    )


def _instant(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")
