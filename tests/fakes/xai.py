"""A fake xAI API (Grok Imagine images and videos) speaking the documented protocol.

- `POST /v1/images/generations` and `POST /v1/images/edits` (JSON; `image: {url}` or
  `images: [{url}]`, at most three): `{data: [{url | b64_json, mime_type,
  revised_prompt}], usage}`; `response_format` defaults to `url`.
- `POST /v1/videos/generations` -> `{request_id}`; `GET /v1/videos/{request_id}` ->
  `pending` (with `progress`) for a configurable number of polls, then `done` with
  `video: {url, duration, respect_moderation}` (or `failed` / `expired`).
- Auth as xAI answers it: no credentials -> 401; an incorrect key -> 400
  `{"code": "...", "error": "Incorrect API key provided: ..."}`.
- Outputs (real PNG/MP4 bytes) are served on the fake's own `/files/...` with absolute URLs
  built from the request's base URL (works through ASGITransport and under uvicorn).

There is no cancel endpoint (xAI documents none); any request the fake doesn't know is
recorded in `requests` and answered 404.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tests.fakes.media import mp4_bytes, png_bytes
from tests.fakes.openai_images import FailureScript, ReleasableDelay, ScriptedFailure

IMAGE_ASPECT_RATIOS = frozenset(
    {
        "1:1",
        "3:4",
        "4:3",
        "9:16",
        "16:9",
        "2:3",
        "3:2",
        "9:19.5",
        "19.5:9",
        "9:20",
        "20:9",
        "1:2",
        "2:1",
        "auto",
    }
)
VIDEO_ASPECT_RATIOS = frozenset({"1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3"})


@dataclass
class VideoJob:
    body: dict[str, Any]
    polls: int = 0
    video_url: str | None = None


class FakeXai:
    """The xAI image and video API with scenario controls. `.app` is the ASGI app."""

    def __init__(self, api_key: str = "xai-test-key") -> None:
        self.api_key = api_key
        self.models = {
            "grok-imagine-image",
            "grok-imagine-image-quality",
            "grok-imagine-video",
            "grok-imagine-video-1.5",
        }
        # Scenario controls.
        self.image_size = (64, 48)
        self.image_count: int | None = None  # None: as many as `n`
        self.withheld_outputs = 0  # outputs answered with respect_moderation: false
        self.refuse_content = False  # 400: the prompt is refused by moderation
        self.failures = FailureScript()  # answers to submissions (POST)
        self.poll_failures = FailureScript()  # answers to status checks (GET)
        self.file_failures = FailureScript()  # answers to output downloads
        self.submit_delay_s = 0.0
        self.video_polls_before_done: int | None = 2  # None: never finishes
        self.video_outcome = "done"  # done | failed | expired | withheld
        self.video_error: dict[str, Any] = {
            "code": "internal_error",
            "message": "Video generation failed.",
        }
        self.video_size = (64, 48)
        self.video_seconds = 1
        self.pending_as_202 = False  # the first status check answers 202 without a body
        # Observations.
        self.requests: list[tuple[str, str]] = []
        self.post_attempts = 0
        self.submissions = 0  # accepted (billed) submissions
        self.bodies: list[tuple[str, dict[str, Any]]] = []
        self.polls = 0
        self.served: list[bytes] = []
        self.files: dict[str, tuple[bytes, str]] = {}
        self.jobs: dict[str, VideoJob] = {}
        self.delay = ReleasableDelay()
        self._router = Starlette(
            routes=[
                Route("/v1/images/generations", self._images, methods=["POST"]),
                Route("/v1/images/edits", self._images, methods=["POST"]),
                Route("/v1/videos/generations", self._videos, methods=["POST"]),
                Route("/v1/videos/{request_id}", self._video_status, methods=["GET"]),
                Route("/files/{name}", self._file, methods=["GET"]),
            ]
        )

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.requests.append((scope["method"], scope["path"]))
        await self._router(scope, receive, send)

    def fail_next(self, status: int, times: int = 1, *, retry_after: str | None = None) -> None:
        failure = ScriptedFailure(status, xai_error_body(status), retry_after)
        self.failures.upcoming.extend([failure] * times)

    def fail_always(self, status: int, body: dict[str, Any] | None = None) -> None:
        self.failures.forever = ScriptedFailure(status, body or xai_error_body(status))

    # -- images --------------------------------------------------------------------------

    async def _images(self, request: Request) -> Response:
        if (denied := self._check_auth(request)) is not None:
            return denied
        body = await request.json()
        self.post_attempts += 1
        if (failure := self.failures.next()) is not None:
            return failure.response()
        if (invalid := self._invalid_image_request(request.url.path, body)) is not None:
            return invalid
        if self.refuse_content:
            return _xai_error(
                400, "invalid-argument", "Generated image rejected by content moderation."
            )
        self.submissions += 1
        self.bodies.append((request.url.path, body))
        await self.delay.wait(self.submit_delay_s)
        count = self.image_count if self.image_count is not None else int(body.get("n", 1))
        data = []
        for index in range(count):
            image = png_bytes(*self.image_size, seed=1000 + len(self.served))
            item: dict[str, Any] = {"mime_type": "image/png", "revised_prompt": ""}
            if index < self.withheld_outputs:
                item["respect_moderation"] = False
            else:
                self.served.append(image)
            if body.get("response_format", "url") == "b64_json":
                item["b64_json"] = base64.b64encode(image).decode()
            else:
                item["url"] = self._publish(request, image, "image/png", "png")
            data.append(item)
        return JSONResponse({"data": data, "usage": {"cost_in_usd_ticks": 200_000_000 * count}})

    def _invalid_image_request(self, path: str, body: dict[str, Any]) -> Response | None:
        if body.get("model") not in self.models:
            return _xai_error(
                404,
                "Some requested entity was not found",
                f"The model {body.get('model')} does not exist or your team does not have access to it.",
            )
        if not body.get("prompt"):
            return _xai_error(422, "Unprocessable Entity", "prompt: field required")
        if not 1 <= int(body.get("n", 1)) <= 10:
            return _xai_error(400, "invalid-argument", "n must be between 1 and 10")
        if body.get("response_format", "url") not in ("url", "b64_json"):
            return _xai_error(400, "invalid-argument", "Invalid response_format")
        if "aspect_ratio" in body and body["aspect_ratio"] not in IMAGE_ASPECT_RATIOS:
            return _xai_error(
                400, "invalid-argument", f"Invalid aspect_ratio {body['aspect_ratio']}"
            )
        if "resolution" in body and body["resolution"] not in ("1k", "2k"):
            return _xai_error(400, "invalid-argument", f"Invalid resolution {body['resolution']}")
        for unsupported in ("size", "quality", "style", "seed"):
            if unsupported in body:
                return _xai_error(400, "invalid-argument", f"Argument not supported: {unsupported}")
        if path.endswith("/edits"):
            sources = [body["image"]] if "image" in body else body.get("images") or []
            if ("image" in body) == ("images" in body) or not 1 <= len(sources) <= 3:
                return _xai_error(
                    400, "invalid-argument", "Provide exactly one of image or images (1-3)"
                )
            if not all(isinstance(s, dict) and s.get("url") for s in sources):
                return _xai_error(422, "Unprocessable Entity", "image: url required")
        elif "image" in body or "images" in body:
            return _xai_error(400, "invalid-argument", "Use /v1/images/edits to edit images")
        return None

    # -- videos --------------------------------------------------------------------------

    async def _videos(self, request: Request) -> Response:
        if (denied := self._check_auth(request)) is not None:
            return denied
        body = await request.json()
        self.post_attempts += 1
        if (failure := self.failures.next()) is not None:
            return failure.response()
        if (invalid := self._invalid_video_request(body)) is not None:
            return invalid
        if self.refuse_content:
            return _xai_error(400, "invalid-argument", "Prompt rejected by content moderation.")
        self.submissions += 1
        self.bodies.append((request.url.path, body))
        await self.delay.wait(self.submit_delay_s)
        request_id = str(uuid.uuid4())
        self.jobs[request_id] = VideoJob(body=body)
        return JSONResponse({"request_id": request_id})

    def _invalid_video_request(self, body: dict[str, Any]) -> Response | None:
        if body.get("model") not in self.models:
            return _xai_error(
                404,
                "Some requested entity was not found",
                f"The model {body.get('model')} does not exist or your team does not have access to it.",
            )
        if not body.get("prompt"):
            return _xai_error(422, "Unprocessable Entity", "prompt: field required")
        if "duration" in body and not 1 <= int(body["duration"]) <= 15:
            return _xai_error(400, "invalid-argument", "duration must be between 1 and 15")
        if "aspect_ratio" in body and body["aspect_ratio"] not in VIDEO_ASPECT_RATIOS:
            return _xai_error(
                400, "invalid-argument", f"Invalid aspect_ratio {body['aspect_ratio']}"
            )
        allowed = (
            {"480p", "720p", "1080p"}
            if body["model"] == "grok-imagine-video-1.5"
            else {"480p", "720p"}
        )
        if "resolution" in body and body["resolution"] not in allowed:
            return _xai_error(400, "invalid-argument", f"Invalid resolution {body['resolution']}")
        if "image" in body and "reference_images" in body:
            return _xai_error(
                400, "invalid-argument", "image and reference_images are mutually exclusive"
            )
        return None

    async def _video_status(self, request: Request) -> Response:
        if (denied := self._check_auth(request)) is not None:
            return denied
        self.polls += 1
        if (failure := self.poll_failures.next()) is not None:
            return failure.response()
        job = self.jobs.get(request.path_params["request_id"])
        if job is None:
            return _xai_error(404, "Some requested entity was not found", "Unknown request id")
        job.polls += 1
        model = job.body["model"]
        if self.video_polls_before_done is None or job.polls <= self.video_polls_before_done:
            if self.pending_as_202 and job.polls == 1:
                return Response(status_code=202)
            total = (self.video_polls_before_done or 99) + 1
            return JSONResponse({"status": "pending", "progress": int(100 * job.polls / total)})
        if self.video_outcome == "failed":
            return JSONResponse(
                {
                    "status": "failed",
                    "video": {"duration": 0, "respect_moderation": True},
                    "model": "",
                    "error": self.video_error,
                }
            )
        if self.video_outcome == "expired":
            return JSONResponse({"status": "expired", "model": model})
        if job.video_url is None:
            video = mp4_bytes(*self.video_size, seconds=self.video_seconds)
            self.served.append(video)
            job.video_url = self._publish(request, video, "video/mp4", "mp4")
        return JSONResponse(
            {
                "status": "done",
                "video": {
                    "url": job.video_url,
                    "duration": self.video_seconds,
                    "respect_moderation": self.video_outcome != "withheld",
                },
                "model": model,
                "progress": 100,
                "usage": {"cost_in_usd_ticks": 500_000_000 * self.video_seconds},
            }
        )

    # -- helpers -------------------------------------------------------------------------

    async def _file(self, request: Request) -> Response:
        if (failure := self.file_failures.next()) is not None:
            return failure.response()
        stored = self.files.get(request.path_params["name"])
        if stored is None:
            return Response(status_code=404)
        return Response(stored[0], media_type=stored[1])

    def _publish(self, request: Request, data: bytes, content_type: str, extension: str) -> str:
        name = f"{uuid.uuid4().hex}.{extension}"
        self.files[name] = (data, content_type)
        return f"{str(request.base_url).rstrip('/')}/files/{name}"

    def _check_auth(self, request: Request) -> Response | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _xai_error(
                401,
                "The request does not have valid authentication credentials",
                "No credentials presented.",
            )
        if token != self.api_key:
            # xAI answers an incorrect key with 400, not 401.
            return _xai_error(
                400,
                "Client specified an invalid argument",
                f"Incorrect API key provided: {token[:2]}***{token[-2:]}. "
                "You can obtain an API key from https://console.x.ai.",
            )
        return None


def _xai_error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "error": message}, status_code=status)


def xai_error_body(status: int) -> dict[str, Any]:
    if status == 429:
        return {"code": "Too many requests", "error": "You are sending requests too frequently"}
    if status >= 500:
        return {
            "code": "The service is currently unavailable",
            "error": "Service temporarily unavailable",
        }
    return {"code": "Client specified an invalid argument", "error": "Invalid request"}
