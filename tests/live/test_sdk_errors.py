"""Every error class the SDK raises, each provoked on a real server: the code, HTTP status,
`next`, `request_id` (equal to the X-Request-Id header) and the code's extra fields."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.live.conftest import LiveServer
from tests.live.sdk import RecordedSleeps, RecordingTransport
from vivix_client import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    BadRequestError,
    ConcurrencyLimited,
    ConflictError,
    EndpointNotFound,
    GenerationNotFound,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidJson,
    InvalidParams,
    KeyInvalid,
    KeyRevoked,
    MethodNotAllowed,
    ModelNotAllowed,
    ModelNotFound,
    NotCancelable,
    NotFoundError,
    PayloadTooLarge,
    PaymentRequiredError,
    PermissionDeniedError,
    ProviderDown,
    RateLimited,
    RateLimitError,
    ServerError,
    TierLocked,
    Unauthorized,
    UnsupportedMediaType,
    Vivix,
)
from vivix_client._core import raise_for_error


def client_for(live_server: LiveServer, key: str, **options: Any) -> Vivix:
    options.setdefault("transport", RecordingTransport())
    return Vivix(key, base_url=live_server.base_url, **options)


def raised(call: Callable[[], object], cls: type[APIError]) -> APIError:
    with pytest.raises(cls) as info:
        call()
    error = info.value
    assert error.code == cls.code
    assert error.message
    assert error.next
    assert error.request_id
    assert error.request_id.startswith("req_")
    assert error.headers["x-request-id"] == error.request_id
    return error


def test_auth_errors(live_server: LiveServer) -> None:
    with client_for(live_server, "vvx_live_" + "A" * 32) as client:
        error = raised(client.credits, KeyInvalid)
        assert isinstance(error, AuthenticationError)
        assert error.status == 401
    account = live_server.account()
    live_server.revoke(account.key)
    with client_for(live_server, account.key) as client:
        raised(client.credits, KeyRevoked)
    locked = live_server.account(tier="standard")
    with client_for(live_server, locked.key) as client:
        error = raised(client.models, TierLocked)
        assert isinstance(error, PermissionDeniedError)
        assert (error.status, error.tier) == (403, "standard")


def test_request_errors_carry_their_fields(live_server: LiveServer) -> None:
    account = live_server.account(credits=0)
    live_server.deny(account.name, "vivix-local-video")
    with client_for(live_server, account.key) as client:
        error = raised(
            lambda: client.generate("vivix-local-image", "x", number_results=9), InvalidParams
        )
        assert isinstance(error, BadRequestError)
        assert (error.status, error.field) == (422, "number_results")
        assert error.reason
        error = raised(lambda: client.generate("no-such-model", "x"), ModelNotFound)
        assert isinstance(error, NotFoundError)
        assert error.model == "no-such-model"
        error = raised(lambda: client.generate("vivix-local-video", "x"), ModelNotAllowed)
        assert error.model == "vivix-local-video"
        error = raised(lambda: client.generate("vivix-local-image", "x"), InsufficientCredits)
        assert isinstance(error, PaymentRequiredError)
        assert error.balance == 0
        assert error.needed > 0
        raised(lambda: client.get(str(uuid.uuid4())), GenerationNotFound)
        raised(
            lambda: client.generate("vivix-local-image", "x", negative_prompt="n" * 70_000),
            PayloadTooLarge,
        )


def test_conflicts(live_server: LiveServer) -> None:
    account = live_server.account()
    with client_for(live_server, account.key) as client:
        done = client.generate("vivix-local-image", "a bell", resolution="1K", wait=60)
        assert done.succeeded
        error = raised(lambda: client.cancel(done.id), NotCancelable)
        assert isinstance(error, ConflictError)
        assert error.body["status"] == "completed"
        key = f"conflict-{uuid.uuid4()}"
        client.generate("vivix-local-audio", "one", idempotency_key=key)
        raised(
            lambda: client.generate("vivix-local-audio", "two", idempotency_key=key),
            IdempotencyConflict,
        )


def test_limits_after_the_retries_are_spent(live_server: LiveServer) -> None:
    account = live_server.account(calls_per_minute=2, concurrent_jobs=1)
    sleeps = RecordedSleeps()
    with client_for(live_server, account.key, max_retries=0, sleep=sleeps) as client:
        client.credits()
        client.credits()
        error = raised(client.credits, RateLimited)
        assert isinstance(error, RateLimitError)
        assert error.retry_after >= 1
        assert error.headers["retry-after"] == str(error.retry_after)
    busy = live_server.account(concurrent_jobs=1)
    with client_for(live_server, busy.key, max_retries=0) as client:
        client.generate("vivix-local-video", "slow", duration=10, resolution="1080p")
        error = raised(lambda: client.generate("vivix-local-image", "x"), ConcurrencyLimited)
        assert error.limit == 1


def test_provider_down_not_configured_is_final_at_once(live_server: LiveServer) -> None:
    account = live_server.account()
    transport = RecordingTransport()
    sleeps = RecordedSleeps()
    with client_for(live_server, account.key, transport=transport, sleep=sleeps) as client:
        error = raised(lambda: client.generate("gpt-image-1", "x"), ProviderDown)
        assert isinstance(error, ServerError)
        assert (error.status, error.reason) == (503, "not_configured")
        assert "retry-after" not in error.headers
    assert len(transport.submits()) == 1, "retrying can't help: no second attempt"
    assert sleeps == []


def test_unreachable_server_is_a_connection_error_after_the_retries() -> None:
    with httpx.Client() as probe:  # a port nobody listens on
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        del probe
    sleeps = RecordedSleeps()
    client = Vivix(
        "vvx_live_" + "A" * 32, base_url=f"http://127.0.0.1:{port}", max_retries=2, sleep=sleeps
    )
    with client, pytest.raises(APIConnectionError):
        client.credits()
    assert len(sleeps) == 2
    assert sleeps[0] < sleeps[1] * 2  # exponential backoff with jitter


@pytest.mark.parametrize(
    ("request_args", "cls"),
    [
        ({"method": "GET", "url": "/api/v1/credits"}, Unauthorized),
        (
            {"method": "POST", "url": "/api/v1/generate", "content": b"{not json", "auth": True},
            InvalidJson,
        ),
        (
            {
                "method": "POST",
                "url": "/api/v1/generate",
                "content": b"x",
                "auth": True,
                "type": "text/plain",
            },
            UnsupportedMediaType,
        ),
        ({"method": "GET", "url": "/api/v1/no-such-route", "auth": True}, EndpointNotFound),
        ({"method": "DELETE", "url": "/api/v1/credits", "auth": True}, MethodNotAllowed),
    ],
    ids=lambda value: getattr(value, "code", None) or "",
)
def test_answers_the_sdk_never_provokes_still_map_to_their_classes(
    live_server: LiveServer, request_args: dict[str, Any], cls: type[APIError]
) -> None:
    """Malformed requests the SDK can't send; the server's real answers still become the
    right exception when parsed by the SDK."""
    account = live_server.account()
    headers = {"Content-Type": request_args.pop("type", "application/json")}
    if request_args.pop("auth", False):
        headers["Authorization"] = f"Bearer {account.key}"
    with httpx.Client(base_url=live_server.base_url) as http:
        response = http.request(**request_args, headers=headers)
    with pytest.raises(cls) as info:
        raise_for_error(response)
    assert info.value.status == response.status_code
    assert info.value.request_id == response.headers["x-request-id"]
