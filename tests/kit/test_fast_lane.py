"""The fast lane (`kit.http.FastLane`) answers exactly as FastAPI's router does: each call is
made twice, through the app as served (the lane) and through FastAPI's own stack, with the
same request id, and the two answers are compared status, headers and body."""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import structlog
from fastapi import FastAPI
from starlette.requests import Request

from tests.factories import AccountWithKey, account_with_key
from vivix.accounts.gate import authorize
from vivix.app import VivixAPI, create_app
from vivix.kit.http import FastLane, PlainRoute
from vivix.kit.metrics import REGISTRY
from vivix.runtime import Runtime

GENERATE = "/api/v1/generate"
LOCAL_IMAGE = {"model": "vivix-local-image", "prompt": "a lighthouse in fog"}
REQUEST_ID = "fast-lane-parity"
# What moves between the two calls of a pair: the calls left, and what is computed from
# the current time (a second may tick).
MOVING_HEADERS = {"x-ratelimit-remaining", "x-ratelimit-reset", "retry-after"}
MOVING_FIELDS = ("elapsed_ms", "eta_ms", "retry_after")


class Pair:
    """Two clients on one app: `lane` as uvicorn serves it, `routed` through FastAPI only."""

    def __init__(self, app: VivixAPI) -> None:
        self.app = app
        routed = functools.partial(FastAPI.__call__, app)
        self.lane = self._client(app)
        self.routed = self._client(routed)

    @staticmethod
    def _client(app: Any) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        return httpx.AsyncClient(transport=transport, base_url="http://testserver")

    def takes(self, method: str, path: str) -> bool:
        assert self.app.fast_lane is not None
        scope = {"type": "http", "method": method, "path": path, "root_path": ""}
        return self.app.fast_lane.match(scope) is not None

    async def call(
        self, method: str, path: str, *, lane: bool = True, **kwargs: Any
    ) -> tuple[httpx.Response, httpx.Response]:
        assert self.takes(method, path) is lane
        headers = {"x-request-id": REQUEST_ID, **kwargs.pop("headers", {})}
        first = await self.lane.request(method, path, headers=headers, **kwargs)
        second = await self.routed.request(method, path, headers=headers, **kwargs)
        return first, second


@pytest.fixture
async def pair(runtime: Runtime) -> AsyncIterator[Pair]:
    both = Pair(create_app(runtime.settings, runtime=runtime))
    async with both.lane, both.routed:
        yield both


def assert_same(lane: httpx.Response, routed: httpx.Response) -> None:
    assert lane.status_code == routed.status_code, (lane.text, routed.text)
    assert [k for k, _ in lane.headers.items()] == [k for k, _ in routed.headers.items()]
    moving = [field for field in MOVING_FIELDS if f'"{field}":' in lane.text]
    skipped = MOVING_HEADERS | ({"content-length"} if moving else set())
    for (name, value), (_, other) in zip(lane.headers.items(), routed.headers.items(), strict=True):
        if name not in skipped:
            assert value == other, name
    if "x-ratelimit-remaining" in lane.headers:
        lane_left = int(lane.headers["x-ratelimit-remaining"])
        assert int(routed.headers["x-ratelimit-remaining"]) == max(0, lane_left - 1)
    if not moving:
        assert lane.content == routed.content
        return
    first, second = lane.json(), routed.json()
    for field in moving:
        assert (first.pop(field) is None) == (second.pop(field) is None)
    assert first == second


async def submitted(pair: Pair, acct: AccountWithKey) -> str:
    response = await pair.lane.post(GENERATE, json=LOCAL_IMAGE, headers=acct.headers)
    assert response.status_code == 201, response.text
    generation_id: str = response.json()["generation_id"]
    return generation_id


async def test_status_read_and_its_errors_are_answered_alike(runtime: Runtime, pair: Pair) -> None:
    acct = await account_with_key(runtime)
    generation_id = await submitted(pair, acct)
    other = await account_with_key(runtime)
    for path, headers, status in [
        (f"/api/v1/generations/{generation_id}", acct.headers, 200),
        (f"/api/v1/generations/{generation_id.upper()}", acct.headers, 200),
        (f"/api/v1/generations/{generation_id}", other.headers, 404),  # someone else's
        ("/api/v1/generations/00000000-0000-7000-8000-000000000000", acct.headers, 404),
        ("/api/v1/generations/not-a-uuid", acct.headers, 404),
        (f"/api/v1/generations/{generation_id}", {}, 401),
        (f"/api/v1/generations/{generation_id}", {"Authorization": "Bearer vx_live_x"}, 401),
    ]:
        lane, routed = await pair.call("GET", path, headers=headers)
        assert lane.status_code == status, lane.text
        assert_same(lane, routed)
    # Another method on a lane path, and a path below it, go the usual way (405, 404).
    for method, path in [
        ("DELETE", f"/api/v1/generations/{generation_id}"),
        ("PUT", GENERATE),
        ("GET", f"/api/v1/generations/{generation_id}/nothing"),
    ]:
        lane, routed = await pair.call(method, path, lane=False, headers=acct.headers)
        assert lane.status_code in (404, 405)
        assert_same(lane, routed)


async def test_submit_and_its_errors_are_answered_alike(runtime: Runtime, pair: Pair) -> None:
    acct = await account_with_key(runtime, credits=15000)
    json_headers = {**acct.headers, "content-type": "application/json"}
    for body, headers, status in [
        (b'{"model": "vivix-local-image"', json_headers, 400),
        (json.dumps(LOCAL_IMAGE).encode(), acct.headers | {"content-type": "text/plain"}, 415),
        (b'{"p": "' + b"x" * 70_000 + b'"}', json_headers, 413),
        (b'{"model": "vivix-local-image"}', json_headers, 422),
        (b'{"model": "no-such-model", "prompt": "x"}', json_headers, 404),
        (json.dumps(LOCAL_IMAGE).encode(), {"content-type": "application/json"}, 401),
    ]:
        lane, routed = await pair.call("POST", GENERATE, content=body, headers=headers)
        assert lane.status_code == status, lane.text
        assert_same(lane, routed)
    lane, routed = await pair.call("POST", GENERATE, json=LOCAL_IMAGE, headers=acct.headers)
    assert lane.status_code == 201
    # Two generations: their ids (and so Location, body) differ, the balance by the price.
    assert lane.headers.keys() == routed.headers.keys()
    assert lane.json().keys() == routed.json().keys()
    assert lane.headers["location"] == f"/api/v1/generations/{lane.json()['generation_id']}"
    price = lane.json()["credits_estimate"]
    assert (
        int(routed.headers["x-credits-balance"]) == int(lane.headers["x-credits-balance"]) - price
    )
    # An idempotent replay is the same answer both ways.
    replay = {**acct.headers, "idempotency-key": "parity"}
    await pair.lane.post(GENERATE, json=LOCAL_IMAGE, headers=replay)
    lane, routed = await pair.call("POST", GENERATE, json=LOCAL_IMAGE, headers=replay)
    assert lane.status_code == 200
    assert lane.headers["idempotent-replayed"] == "true"
    assert_same(lane, routed)


async def test_credits_and_the_rate_limit_are_answered_alike(runtime: Runtime, pair: Pair) -> None:
    acct = await account_with_key(runtime, calls_per_minute=2)
    lane, routed = await pair.call("GET", "/api/v1/credits", headers=acct.headers)
    assert lane.status_code == 200
    assert_same(lane, routed)
    lane, routed = await pair.call("GET", "/api/v1/credits", headers=acct.headers)
    assert lane.status_code == 429
    assert "retry-after" in lane.headers
    assert lane.headers["x-ratelimit-remaining"] == routed.headers["x-ratelimit-remaining"] == "0"
    assert_same(lane, routed)


async def test_lane_requests_are_counted_under_their_route_template(
    runtime: Runtime, pair: Pair
) -> None:
    acct = await account_with_key(runtime)
    generation_id = await submitted(pair, acct)
    labels = {"method": "GET", "route": "/api/v1/generations/{generation_id}", "status": "200"}
    before = REGISTRY.get_sample_value("vivix_http_requests_total", labels) or 0.0
    lane, routed = await pair.call(
        "GET", f"/api/v1/generations/{generation_id}", headers=acct.headers
    )
    assert lane.status_code == routed.status_code == 200
    assert REGISTRY.get_sample_value("vivix_http_requests_total", labels) == before + 2


async def test_an_unexpected_fault_in_the_lane_is_the_same_logged_500(runtime: Runtime) -> None:
    acct = await account_with_key(runtime)
    app = create_app(runtime.settings, runtime=runtime)

    async def broken(request: Request) -> None:
        async with runtime.db.autocommit() as connection:
            await authorize(request, connection)  # the account headers are known when it breaks
        raise RuntimeError("boom")

    app.router.add_api_route("/api/v1/broken-for-test", broken, route_class_override=PlainRoute)
    (route,) = [r for r in app.router.routes if getattr(r, "endpoint", None) is broken]
    app.fast_lane = FastLane(app, [route])  # type: ignore[list-item]
    both = Pair(app)
    async with both.lane, both.routed:
        with structlog.testing.capture_logs() as logs:
            lane, routed = await both.call("GET", "/api/v1/broken-for-test", headers=acct.headers)
    assert lane.status_code == 500
    assert lane.json()["error"] == "INTERNAL_ERROR"
    assert lane.headers["x-request-id"] == REQUEST_ID
    assert "x-content-type-options" not in lane.headers  # sent outside the middlewares
    assert_same(lane, routed)
    errors = [e for e in logs if e["event"] == "unhandled_error"]
    assert [e["request_id"] for e in errors] == [REQUEST_ID, REQUEST_ID]
    assert errors[0]["path"] == errors[1]["path"] == "/api/v1/broken-for-test"
