"""Checks real responses against the OpenAPI document (`/openapi.json`).

Every response the shared `client` fixture (and the SDK's tests against a real server)
sees for `/api/v1` or `/files` goes through `check_response`: the route and status must be
documented, the documented required headers present and well-formed, and a JSON body
valid against the declared schema. The document keeps response objects open to new fields
for clients' sake; here they are checked closed, so an undocumented field fails too."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from functools import cache
from typing import Any

import httpx
from jsonschema import Draft202012Validator

from vivix.openapi.document import openapi_document

CHECKED_PREFIXES = ("/api/v1/", "/files/")


@dataclass(frozen=True)
class _Route:
    method: str
    template: str
    pattern: re.Pattern[str]
    operation: dict[str, Any]


def _closed(schema: Any) -> Any:
    """Every object schema with declared properties admits no others (except where an
    allOf composes it, whose parts are closed themselves)."""
    if isinstance(schema, dict):
        out = {key: _closed(value) for key, value in schema.items()}
        if (
            "properties" in out
            and "allOf" not in out
            and out.get("additionalProperties", True) is True
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    return schema


@cache
def _strict_document() -> dict[str, Any]:
    return _closed(copy.deepcopy(openapi_document()))


@cache
def _routes() -> tuple[_Route, ...]:
    routes = []
    for template, methods in _strict_document()["paths"].items():
        # Files' keys hold slashes; every other path parameter is one segment.
        regex = re.sub(r"\{(\w+)\}", lambda m: ".+" if m.group(1) == "key" else "[^/]+", template)
        for method, operation in methods.items():
            routes.append(_Route(method.upper(), template, re.compile(f"^{regex}$"), operation))
    return tuple(routes)


def _validator(schema: dict[str, Any]) -> Draft202012Validator:
    # The components travel along so `#/components/...` references resolve.
    return Draft202012Validator({**schema, "components": _strict_document()["components"]})


def _problems(schema: dict[str, Any], value: Any) -> list[str]:
    return [
        f"{'/'.join(str(p) for p in error.absolute_path) or '$'}: {error.message}"
        for error in _validator(schema).iter_errors(value)
    ]


def _error_schema() -> dict[str, Any]:
    return {"$ref": "#/components/schemas/Error"}


def response_problems(method: str, path: str, response: httpx.Response) -> list[str]:
    """What is wrong with this response according to the document (empty: conforms)."""
    matches = [r for r in _routes() if r.pattern.match(path)]
    route = next((r for r in matches if r.method == method), None)
    if route is None:
        # No such operation: only the generic 404/405 error bodies are acceptable.
        if response.status_code not in (404, 405):
            return [f"{method} {path} is not documented but answered {response.status_code}"]
        return _problems(_error_schema(), response.json())
    spec = route.operation["responses"].get(str(response.status_code))
    if spec is None:
        return [
            f"{method} {route.template}: status {response.status_code} is not documented "
            f"({response.text[:200]})"
        ]
    problems = []
    for name, header in spec.get("headers", {}).items():
        if "$ref" in header:
            header = _strict_document()["components"]["headers"][name]
        value = response.headers.get(name)
        if value is None:
            if header.get("required"):
                problems.append(f"required header {name} is missing")
            continue
        problems += [f"header {name}: {p}" for p in _problems(header["schema"], value)]
    content = spec.get("content", {})
    if method == "HEAD":
        pass  # headers only
    elif "application/json" in content:
        if not response.headers.get("content-type", "").startswith("application/json"):
            problems.append(f"content type {response.headers.get('content-type')} is not JSON")
        else:
            problems += _problems(content["application/json"]["schema"], response.json())
    elif not content and method != "HEAD" and response.content:
        problems.append("a body was sent where none is documented")
    return [f"{method} {path} → {response.status_code}: {p}" for p in problems]


def check_response(response: httpx.Response, request: httpx.Request | None = None) -> None:
    request = request or response.request
    path = request.url.path
    if not path.startswith(CHECKED_PREFIXES):
        return
    problems = response_problems(request.method, path, response)
    if problems:
        raise AssertionError("response does not match /openapi.json:\n" + "\n".join(problems))


class ConformanceCheckingTransport(httpx.AsyncBaseTransport):
    """Wraps a transport; every response is checked before the test sees it."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.url.path.startswith(CHECKED_PREFIXES) and not _is_stream(response):
            await response.aread()
            check_response(response, request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def _is_stream(response: httpx.Response) -> bool:
    # Event streams never end on their own: checked event by event elsewhere, not here.
    return response.headers.get("content-type", "").startswith("text/event-stream")
