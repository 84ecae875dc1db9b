"""A fake OpenAI Images API (and the pieces other OpenAI-style fakes share).

It speaks the public protocol: `POST /v1/images/generations` and `POST /v1/images/edits`
(multipart `image[]` uploads or JSON `images: [{image_url}]`), Bearer auth answered with
OpenAI's `{"error": {"message", "type", "param", "code"}}` bodies, GPT image models that
always answer base64 and reject `response_format`, dall-e models that answer URLs unless
asked for `b64_json`. Output files are real PNGs served on the fake's own `/files/...`,
with absolute URLs built from the request's base URL, so the same app works through
`httpx.ASGITransport` and served by uvicorn on 127.0.0.1 (`serve_on_loopback`).

Scenario controls are plain attributes and `fail_next` / `fail_always`; observations are
counters and recorded bodies.
"""

from __future__ import annotations

import asyncio
import base64
import email.parser
import email.policy
import json
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.fakes.media import png_bytes

GPT_IMAGE_SIZES = frozenset({"1024x1024", "1536x1024", "1024x1536", "auto"})
DALL_E_3_SIZES = frozenset({"1024x1024", "1792x1024", "1024x1792"})
DALL_E_2_SIZES = frozenset({"256x256", "512x512", "1024x1024"})


@dataclass
class ScriptedFailure:
    """One canned error answer."""

    status: int
    body: dict[str, Any] | None = None
    retry_after: str | None = None

    def response(self) -> Response:
        headers = {"retry-after": self.retry_after} if self.retry_after is not None else None
        if self.body is None:
            return Response(status_code=self.status, headers=headers)
        return JSONResponse(self.body, status_code=self.status, headers=headers)


@dataclass
class FailureScript:
    """Errors answered to submissions before (or instead of) a success."""

    upcoming: list[ScriptedFailure] = field(default_factory=list)
    forever: ScriptedFailure | None = None

    def next(self) -> ScriptedFailure | None:
        if self.upcoming:
            return self.upcoming.pop(0)
        return self.forever


@dataclass
class UploadedFile:
    field: str
    filename: str | None
    content_type: str
    data: bytes


class ReleasableDelay:
    """A response delay that ends early when the fake is released (so a served fake can
    shut down without waiting for a deliberately slow answer)."""

    def __init__(self) -> None:
        self._released: asyncio.Event | None = None

    async def wait(self, seconds: float) -> None:
        if seconds <= 0:
            return
        if self._released is None:
            self._released = asyncio.Event()
        with suppress(TimeoutError):
            await asyncio.wait_for(self._released.wait(), seconds)

    def release(self) -> None:
        if self._released is not None:
            self._released.set()


class FakeOpenAiImages:
    """The OpenAI Images API with scenario controls. `.app` is the ASGI app."""

    def __init__(self, api_key: str = "sk-test-key") -> None:
        self.api_key = api_key
        self.models = {"gpt-image-1", "gpt-image-1-mini", "dall-e-3", "dall-e-2"}
        # Scenario controls.
        self.image_size = (64, 48)
        self.image_count: int | None = None  # None: as many as `n`
        self.refuse_content = False  # answer with the model family's safety refusal
        self.failures = FailureScript()
        self.file_failures = FailureScript()  # answers to output downloads
        self.submit_delay_s = 0.0  # after accepting, before answering (timeouts)
        # Observations.
        self.requests: list[tuple[str, str]] = []
        self.post_attempts = 0
        self.submissions = 0  # accepted (and so, upstream, billed) requests
        self.bodies: list[tuple[str, dict[str, Any]]] = []
        self.uploads: list[UploadedFile] = []
        self.served: list[bytes] = []  # every output image, in order
        self.files: dict[str, tuple[bytes, str]] = {}
        self.delay = ReleasableDelay()
        self._router = Starlette(
            routes=[
                Route("/v1/images/generations", self._generations, methods=["POST"]),
                Route("/v1/images/edits", self._edits, methods=["POST"]),
                Route("/files/{name}", self._file, methods=["GET"]),
            ]
        )

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.requests.append((scope["method"], scope["path"]))
        await self._router(scope, receive, send)

    def fail_next(
        self,
        status: int,
        times: int = 1,
        *,
        retry_after: str | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        failure = ScriptedFailure(status, body or error_body_for(status), retry_after)
        self.failures.upcoming.extend([failure] * times)

    def fail_always(self, status: int, *, body: dict[str, Any] | None = None) -> None:
        self.failures.forever = ScriptedFailure(status, body or error_body_for(status))

    # -- endpoints -----------------------------------------------------------------------

    async def _generations(self, request: Request) -> Response:
        if (denied := self._check_auth(request)) is not None:
            return denied
        try:
            body = await request.json()
        except ValueError:
            return _error(
                400, "We could not parse the JSON body of your request.", "invalid_request_error"
            )
        return await self._render(request, "/v1/images/generations", body)

    async def _edits(self, request: Request) -> Response:
        if (denied := self._check_auth(request)) is not None:
            return denied
        content_type = request.headers.get("content-type", "")
        raw = await request.body()
        if content_type.startswith("multipart/form-data"):
            body: dict[str, Any] = {}
            files: list[UploadedFile] = []
            for part in parse_multipart(content_type, raw):
                if part.filename is None:
                    body[part.field] = part.data.decode()
                else:
                    files.append(part)
            if not files:
                return _error(
                    400,
                    "Missing required parameter: 'image'.",
                    "invalid_request_error",
                    param="image",
                )
            body["n"] = int(body.get("n", 1))
            self.uploads.extend(files)
        else:
            body = json.loads(raw or b"{}")
            if not body.get("images"):
                return _error(
                    400,
                    "Missing required parameter: 'images'.",
                    "invalid_request_error",
                    param="images",
                )
        return await self._render(request, "/v1/images/edits", body)

    async def _render(self, request: Request, path: str, body: dict[str, Any]) -> Response:
        self.post_attempts += 1
        if (failure := self.failures.next()) is not None:
            return failure.response()
        model = str(body.get("model", "dall-e-2"))
        if model not in self.models:
            return _error(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                "invalid_request_error",
                code="model_not_found",
            )
        if (invalid := _validate(model, body)) is not None:
            return invalid
        if self.refuse_content:
            if model.startswith("dall-e"):
                return _error(
                    400,
                    "Your request was rejected as a result of our safety system.",
                    "invalid_request_error",
                    code="content_policy_violation",
                )
            return _error(
                400,
                "Your request was rejected by the safety system.",
                "image_generation_user_error",
                code="moderation_blocked",
            )
        self.submissions += 1
        self.bodies.append((path, body))
        await self.delay.wait(self.submit_delay_s)
        gpt_image = model.startswith("gpt-image")
        response_format = "b64_json" if gpt_image else body.get("response_format", "url")
        data = []
        for _ in range(self.image_count if self.image_count is not None else int(body.get("n", 1))):
            image = png_bytes(*self.image_size, seed=len(self.served))
            self.served.append(image)
            if response_format == "b64_json":
                data.append({"b64_json": base64.b64encode(image).decode()})
            else:
                data.append(
                    {
                        "url": self.publish(request, image, "image/png", "png"),
                        "revised_prompt": body.get("prompt"),
                    }
                )
        answer: dict[str, Any] = {"created": 1_760_000_000, "data": data}
        if gpt_image:
            answer |= {
                "output_format": "png",
                "size": body.get("size", "1024x1024"),
                "quality": "medium",
            }
            answer["usage"] = {"input_tokens": 10, "output_tokens": 100, "total_tokens": 110}
        return JSONResponse(answer)

    async def _file(self, request: Request) -> Response:
        if (failure := self.file_failures.next()) is not None:
            return failure.response()
        stored = self.files.get(request.path_params["name"])
        if stored is None:
            return Response(status_code=404)
        return Response(stored[0], media_type=stored[1])

    # -- helpers -------------------------------------------------------------------------

    def publish(self, request: Request, data: bytes, content_type: str, extension: str) -> str:
        name = f"{uuid.uuid4().hex}.{extension}"
        self.files[name] = (data, content_type)
        return f"{str(request.base_url).rstrip('/')}/files/{name}"

    def _check_auth(self, request: Request) -> Response | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _error(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                "invalid_request_error",
            )
        if token != self.api_key:
            return _error(
                401,
                f"Incorrect API key provided: {token[:3]}***{token[-3:]}. You can find your "
                "API key at https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                code="invalid_api_key",
            )
        return None


def _validate(model: str, body: dict[str, Any]) -> Response | None:
    """The documented per-model constraints the adapter's mapping has to respect."""
    if not body.get("prompt"):
        return _error(
            400, "Missing required parameter: 'prompt'.", "invalid_request_error", param="prompt"
        )
    if model.startswith("gpt-image") and "response_format" in body:
        return _error(
            400,
            "Unknown parameter: 'response_format'.",
            "invalid_request_error",
            param="response_format",
            code="unknown_parameter",
        )
    sizes = (
        GPT_IMAGE_SIZES
        if model.startswith("gpt-image")
        else DALL_E_3_SIZES
        if model == "dall-e-3"
        else DALL_E_2_SIZES
    )
    if "size" in body and body["size"] not in sizes:
        return _error(
            400,
            f"Invalid value: '{body['size']}'. Supported values are: {sorted(sizes)}.",
            "invalid_request_error",
            param="size",
            code="invalid_value",
        )
    if model == "dall-e-3" and int(body.get("n", 1)) != 1:
        return _error(
            400, "You must provide n=1 for this model.", "invalid_request_error", param="n"
        )
    return None


def _error(
    status: int, message: str, kind: str, *, param: str | None = None, code: str | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": code}},
        status_code=status,
    )


def error_body_for(status: int) -> dict[str, Any]:
    if status == 429:
        return {
            "error": {
                "message": "Rate limit reached for images per minute.",
                "type": "requests",
                "param": None,
                "code": "rate_limit_exceeded",
            }
        }
    if status >= 500:
        return {
            "error": {
                "message": "The server had an error while processing your request.",
                "type": "server_error",
                "param": None,
                "code": None,
            }
        }
    return {
        "error": {
            "message": "Invalid request.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }


def parse_multipart(content_type: str, body: bytes) -> list[UploadedFile]:
    """multipart/form-data parts (the stdlib parser: no python-multipart needed)."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    parts = []
    for part in message.iter_parts():
        payload = part.get_payload(decode=True)
        parts.append(
            UploadedFile(
                field=str(part.get_param("name", header="content-disposition")),
                filename=part.get_filename(),
                content_type=part.get_content_type(),
                data=payload if isinstance(payload, bytes) else b"",
            )
        )
    return parts


@asynccontextmanager
async def serve_on_loopback(app: ASGIApp) -> AsyncIterator[str]:
    """Serve `app` with uvicorn on 127.0.0.1 (an ephemeral port) in this event loop;
    yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            interface="asgi3",
            lifespan="off",
            ws="none",
            http="h11",
            log_level="warning",
            access_log=False,
        )
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(5):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()
