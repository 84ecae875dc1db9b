"""Every error code of API.md §2 reachable from /api/v1, its exact shape and headers, the
documented check order on POST /generate, and that a rejected call leaves no trace."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import structlog
from sqlalchemy import func, select
from starlette.requests import Request

from tests.audit import assert_ledger_consistent, generation_count, ledger_entry_count
from tests.factories import AccountWithKey, account_with_key
from vivix.accounts.gate import authorize
from vivix.admin import service as admin
from vivix.app import create_app
from vivix.models import Account, Generation, LedgerEntry
from vivix.runtime import Runtime

GENERATE = "/api/v1/generate"
LOCAL_IMAGE = {"model": "vivix-local-image", "prompt": "a lighthouse in fog"}  # 1K: 2 credits
GROK = {"model": "grok-imagine-image-quality", "prompt": "a lighthouse in fog"}
BASE_FIELDS = {"error", "message", "next", "request_id"}
MAX_BODY = 64 * 1024


@dataclass(frozen=True)
class Trace:
    """What a call could have changed: the wallet and the rows money and work live in."""

    balance: int
    held: int
    account_generations: int
    account_entries: int
    all_generations: int
    all_entries: int


async def trace(runtime: Runtime, account_id: str) -> Trace:
    async with runtime.db.read() as session:
        account = (
            await session.execute(select(Account).where(Account.id == account_id))
        ).scalar_one()
        generations = (
            await session.execute(
                select(func.count())
                .select_from(Generation)
                .where(Generation.account_id == account_id)
            )
        ).scalar_one()
        entries = (
            await session.execute(
                select(func.count())
                .select_from(LedgerEntry)
                .where(LedgerEntry.account_id == account_id)
            )
        ).scalar_one()
    return Trace(
        balance=account.balance,
        held=account.held,
        account_generations=int(generations),
        account_entries=int(entries),
        all_generations=await generation_count(runtime),
        all_entries=await ledger_entry_count(runtime),
    )


async def assert_unchanged(runtime: Runtime, account_id: str, before: Trace) -> None:
    assert await trace(runtime, account_id) == before
    await assert_ledger_consistent(runtime)


def assert_error(
    response: httpx.Response,
    status: int,
    code: str,
    extra: dict[str, Any] | None = None,
    *,
    balance: int | None = None,
) -> dict[str, Any]:
    """The documented error shape. `balance` given: an authenticated error, which carries the
    account headers (and X-Credits-Balance equals it); not given: they are absent."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert body["error"] == code
    assert isinstance(body["message"], str)
    assert body["message"].strip()
    assert isinstance(body["next"], str)
    assert body["next"].strip()
    assert body["request_id"] == response.headers["x-request-id"]
    assert body["request_id"].startswith("req_")
    extra = extra or {}
    assert set(body) == BASE_FIELDS | set(extra), body
    for name, value in extra.items():
        if value is not ...:
            assert body[name] == value, (name, body[name])
    if balance is None:
        for header in ("x-ratelimit-remaining", "x-ratelimit-limit", "x-credits-balance"):
            assert header not in response.headers
    else:
        assert response.headers["x-credits-balance"] == str(balance)
        assert response.headers["x-ratelimit-remaining"].isdigit()
        assert response.headers["x-ratelimit-limit"].isdigit()
        assert 1 <= int(response.headers["x-ratelimit-reset"]) <= 60
    return body


async def submit(
    client: httpx.AsyncClient, acct: AccountWithKey, body: dict[str, Any], **headers: str
) -> httpx.Response:
    return await client.post(GENERATE, json=body, headers={**acct.headers, **headers})


# -- 400 INVALID_JSON ------------------------------------------------------------------


NOT_JSON_OBJECTS = [
    b"not json",
    b'{"model": "vivix-local-image",',
    b"[]",
    b'"a string"',
    b"null",
    b"42",
    b"",
    b'{"model": "\xff\xfe"}',  # not UTF-8
    b'{"model": "vivix-local-image", "prompt": "x\\ud800"}',  # half a surrogate pair
    b'{"\\udc00": 1}',
    b'{"seed": ' + b"9" * 5000 + b"}",  # over Python's integer digit limit
    b'{"a":' * 5000 + b"1" + b"}" * 5000,  # deeper than the parser's recursion limit
]


async def test_body_that_is_not_a_json_object_is_invalid_json(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime)
    before = await trace(runtime, acct.id)
    for raw in NOT_JSON_OBJECTS:
        response = await client.post(
            GENERATE, content=raw, headers={**acct.headers, "Content-Type": "application/json"}
        )
        assert response.status_code == 400, raw[:60]
        assert_error(response, 400, "INVALID_JSON", balance=15000)
    await assert_unchanged(runtime, acct.id, before)


# -- 401 UNAUTHORIZED / KEY_INVALID / KEY_REVOKED -------------------------------------


async def test_missing_or_malformed_authorization_is_unauthorized(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime)
    before = await trace(runtime, acct.id)
    for authorization in [
        None,
        "",
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer   ",
        "Bearer a b",
        f"Token {acct.key}",
        acct.key,
    ]:
        headers = {} if authorization is None else {"Authorization": authorization}
        response = await client.post(GENERATE, json=LOCAL_IMAGE, headers=headers)
        assert response.status_code == 401, authorization
        assert_error(response, 401, "UNAUTHORIZED")
    await assert_unchanged(runtime, acct.id, before)


async def test_unknown_key_is_key_invalid(runtime: Runtime, client: httpx.AsyncClient) -> None:
    acct = await account_with_key(runtime)
    before = await trace(runtime, acct.id)
    for token in [
        "vvx_live_" + "A" * 32,
        "vvx_test_" + "z" * 32,
        "vvx_live_short",
        "sk-0123456789",
        "vvx_live_" + "!" * 32,
        acct.key + "0",
        acct.key[:-1],
    ]:
        response = await client.post(
            GENERATE, json=LOCAL_IMAGE, headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 401, token
        assert_error(response, 401, "KEY_INVALID")
    await assert_unchanged(runtime, acct.id, before)


async def test_key_with_one_character_changed_is_key_invalid(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime)
    last = acct.key[-1]
    forged = acct.key[:-1] + ("a" if last != "a" else "b")
    response = await client.get("/api/v1/credits", headers={"Authorization": f"Bearer {forged}"})
    assert_error(response, 401, "KEY_INVALID")


async def test_revoked_key_is_key_revoked_on_every_endpoint(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime)
    await admin.revoke_key(runtime, acct.key[:15])
    before = await trace(runtime, acct.id)
    for method, path in [
        ("POST", GENERATE),
        ("GET", "/api/v1/models"),
        ("GET", "/api/v1/credits"),
        ("GET", "/api/v1/generations"),
        ("GET", "/api/v1/generations/01900000-0000-7000-8000-000000000000"),
    ]:
        response = await client.request(method, path, json=LOCAL_IMAGE, headers=acct.headers)
        assert_error(response, 401, "KEY_REVOKED")
    await assert_unchanged(runtime, acct.id, before)


# -- 402 INSUFFICIENT_CREDITS ----------------------------------------------------------


async def test_submit_costing_more_than_the_balance_is_insufficient_credits(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime, credits=1)
    before = await trace(runtime, acct.id)
    response = await submit(client, acct, LOCAL_IMAGE)
    assert_error(response, 402, "INSUFFICIENT_CREDITS", {"balance": 1, "needed": 2}, balance=1)
    await assert_unchanged(runtime, acct.id, before)


async def test_held_credits_are_not_available_for_the_next_submit(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime, credits=5)
    body = {**LOCAL_IMAGE, "resolution": "2K"}  # 4 credits
    assert (await submit(client, acct, body)).status_code == 201
    before = await trace(runtime, acct.id)
    response = await submit(client, acct, body)
    assert_error(response, 402, "INSUFFICIENT_CREDITS", {"balance": 1, "needed": 4}, balance=1)
    await assert_unchanged(runtime, acct.id, before)


async def test_submit_with_exactly_enough_credits_succeeds(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime, credits=2)
    response = await submit(client, acct, LOCAL_IMAGE)
    assert response.status_code == 201
    assert response.headers["x-credits-balance"] == "0"
    await assert_ledger_consistent(runtime)


# -- 403 TIER_LOCKED / MODEL_NOT_ALLOWED ----------------------------------------------


@pytest.mark.parametrize("tier", ["free", "standard"])
async def test_tier_without_api_access_is_tier_locked_everywhere(
    runtime: Runtime, client: httpx.AsyncClient, tier: str
) -> None:
    acct = await account_with_key(runtime, tier=tier, credits=50)
    await admin.set_models(runtime, acct.name, ["vivix-local-image"], allow=True)
    before = await trace(runtime, acct.id)
    for method, path in [
        ("POST", GENERATE),
        ("GET", "/api/v1/models"),
        ("GET", "/api/v1/credits"),
        ("GET", "/api/v1/generations"),
    ]:
        response = await client.request(method, path, json=LOCAL_IMAGE, headers=acct.headers)
        assert_error(response, 403, "TIER_LOCKED", {"tier": tier}, balance=50)
    await assert_unchanged(runtime, acct.id, before)


async def test_model_outside_the_allowlist_is_model_not_allowed(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime)
    await admin.set_models(runtime, acct.name, ["vivix-local-image"], allow=False)
    before = await trace(runtime, acct.id)
    response = await submit(client, acct, LOCAL_IMAGE)
    assert_error(response, 403, "MODEL_NOT_ALLOWED", {"model": "vivix-local-image"}, balance=15000)
    await assert_unchanged(runtime, acct.id, before)


async def test_test_key_is_bound_by_the_allowlist_too(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime, test_key=True)
    await admin.set_models(runtime, acct.name, ["grok-imagine-image-quality"], allow=False)
    before = await trace(runtime, acct.id)
    response = await submit(client, acct, GROK)
    assert_error(
        response, 403, "MODEL_NOT_ALLOWED", {"model": "grok-imagine-image-quality"}, balance=15000
    )
    await assert_unchanged(runtime, acct.id, before)


# -- 404 MODEL_NOT_FOUND / GENERATION_NOT_FOUND / unknown routes -----------------------


async def test_unknown_model_slug_is_model_not_found(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime)
    before = await trace(runtime, acct.id)
    for slug in ["no-such-model", "VIVIX-LOCAL-IMAGE", " vivix-local-image", ""]:
        response = await submit(client, acct, {"model": slug, "prompt": "x"})
        assert_error(response, 404, "MODEL_NOT_FOUND", {"model": slug}, balance=15000)
    await assert_unchanged(runtime, acct.id, before)


async def test_unknown_generation_id_is_generation_not_found(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime)
    for generation_id in [
        "01900000-0000-7000-8000-000000000000",
        "not-a-uuid",
        "01900000000070008000000000000000",
        "%00",
    ]:
        response = await client.get(f"/api/v1/generations/{generation_id}", headers=acct.headers)
        assert_error(response, 404, "GENERATION_NOT_FOUND", balance=15000)


async def test_another_accounts_generation_is_generation_not_found(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    owner = await account_with_key(runtime)
    stranger = await account_with_key(runtime)
    created = await submit(client, owner, LOCAL_IMAGE)
    generation_id = created.json()["generation_id"]
    for candidate in (generation_id, generation_id.upper()):
        response = await client.get(f"/api/v1/generations/{candidate}", headers=stranger.headers)
        body = assert_error(response, 404, "GENERATION_NOT_FOUND", balance=15000)
        unknown = await client.get(
            "/api/v1/generations/01900000-0000-7000-8000-000000000000", headers=stranger.headers
        )
        # Indistinguishable from an id that doesn't exist at all.
        assert body["message"] == unknown.json()["message"]
        assert body["next"] == unknown.json()["next"]
    owned = await client.get(f"/api/v1/generations/{generation_id}", headers=owner.headers)
    assert owned.status_code == 200


async def test_unknown_route_is_a_json_404(runtime: Runtime, client: httpx.AsyncClient) -> None:
    acct = await account_with_key(runtime)
    for method, path in [
        ("GET", "/api/v1/nope"),
        ("GET", "/nope"),
        ("POST", "/api/v1/generations/x/y/z"),
    ]:
        response = await client.request(method, path, headers=acct.headers)
        assert response.status_code == 404
        assert response.headers["content-type"].startswith("application/json")
        body = response.json()
        assert body["error"] == "NOT_FOUND"
        assert body["message"]
        assert body["next"]
        assert body["request_id"] == response.headers["x-request-id"]
        assert "<html" not in response.text.lower()


async def test_wrong_method_is_a_json_405(runtime: Runtime, client: httpx.AsyncClient) -> None:
    acct = await account_with_key(runtime)
    response = await client.delete(GENERATE, headers=acct.headers)
    assert response.status_code == 405
    body = response.json()
    assert body["error"] == "METHOD_NOT_ALLOWED"
    assert body["request_id"] == response.headers["x-request-id"]


# -- 409 IDEMPOTENCY_CONFLICT -----------------------------------------------------------


async def test_same_idempotency_key_with_another_body_is_idempotency_conflict(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime)
    first = await submit(client, acct, LOCAL_IMAGE, **{"Idempotency-Key": "order-1"})
    assert first.status_code == 201
    before = await trace(runtime, acct.id)
    response = await submit(
        client, acct, {**LOCAL_IMAGE, "prompt": "another"}, **{"Idempotency-Key": "order-1"}
    )
    assert_error(response, 409, "IDEMPOTENCY_CONFLICT", balance=15000 - 2)
    await assert_unchanged(runtime, acct.id, before)


# -- 413 PAYLOAD_TOO_LARGE / 415 UNSUPPORTED_MEDIA_TYPE --------------------------------


def padded_body(size: int) -> bytes:
    """A valid submit body of exactly `size` bytes (trailing whitespace is valid JSON)."""
    raw = json.dumps(LOCAL_IMAGE).encode()
    return raw + b" " * (size - len(raw))


async def test_body_over_64_kib_is_payload_too_large(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime)
    before = await trace(runtime, acct.id)
    response = await client.post(
        GENERATE,
        content=padded_body(MAX_BODY + 1),
        headers={**acct.headers, "Content-Type": "application/json"},
    )
    assert_error(response, 413, "PAYLOAD_TOO_LARGE", balance=15000)
    await assert_unchanged(runtime, acct.id, before)


async def test_chunked_body_over_64_kib_without_length_is_payload_too_large(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime)
    before = await trace(runtime, acct.id)

    async def chunks() -> AsyncIterator[bytes]:
        body = padded_body(MAX_BODY + 1000)
        for start in range(0, len(body), 4096):
            yield body[start : start + 4096]

    response = await client.post(
        GENERATE, content=chunks(), headers={**acct.headers, "Content-Type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "PAYLOAD_TOO_LARGE", balance=15000)
    await assert_unchanged(runtime, acct.id, before)


async def test_body_of_exactly_64_kib_is_accepted(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime)
    response = await client.post(
        GENERATE,
        content=padded_body(MAX_BODY),
        headers={**acct.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 201, response.text


async def test_post_without_a_json_content_type_is_unsupported_media_type(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime)
    before = await trace(runtime, acct.id)
    for content_type in [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonx",
        "text/json",
    ]:
        headers = dict(acct.headers)
        if content_type is not None:
            headers["Content-Type"] = content_type
        response = await client.post(GENERATE, content=json.dumps(LOCAL_IMAGE), headers=headers)
        assert response.status_code == 415, content_type
        assert_error(response, 415, "UNSUPPORTED_MEDIA_TYPE", balance=15000)
    await assert_unchanged(runtime, acct.id, before)


async def test_json_content_types_with_parameters_or_suffix_are_accepted(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime)
    for content_type in [
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/vnd.x+json",
    ]:
        response = await client.post(
            GENERATE,
            content=json.dumps(LOCAL_IMAGE),
            headers={**acct.headers, "Content-Type": content_type},
        )
        assert response.status_code == 201, (content_type, response.text)


# -- 422 INVALID_PARAMS (the catalog rules themselves: test_params_validation.py) -------


async def test_missing_prompt_is_invalid_params_naming_it(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime)
    before = await trace(runtime, acct.id)
    response = await submit(client, acct, {"model": "vivix-local-image"})
    body = assert_error(
        response, 422, "INVALID_PARAMS", {"field": "prompt", "reason": ...}, balance=15000
    )
    assert isinstance(body["reason"], str)
    assert body["reason"].strip()
    await assert_unchanged(runtime, acct.id, before)


# -- 429 RATE_LIMIT / CONCURRENCY_LIMIT -------------------------------------------------


async def test_call_over_the_per_minute_limit_is_rate_limit(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime, calls_per_minute=2)
    assert (await client.get("/api/v1/credits", headers=acct.headers)).status_code == 200
    assert (await submit(client, acct, LOCAL_IMAGE)).status_code == 201
    before = await trace(runtime, acct.id)
    response = await submit(client, acct, LOCAL_IMAGE)
    body = assert_error(response, 429, "RATE_LIMIT", {"retry_after": ...}, balance=15000 - 2)
    assert isinstance(body["retry_after"], int)
    assert 1 <= body["retry_after"] <= 60
    assert response.headers["retry-after"] == str(body["retry_after"])
    assert response.headers["x-ratelimit-remaining"] == "0"
    assert response.headers["x-ratelimit-limit"] == "2"
    await assert_unchanged(runtime, acct.id, before)
    # Every endpoint counts against the same window and is refused alike.
    credits = await client.get("/api/v1/credits", headers=acct.headers)
    assert_error(credits, 429, "RATE_LIMIT", {"retry_after": ...}, balance=15000 - 2)


async def test_rate_limit_is_per_account(runtime: Runtime, client: httpx.AsyncClient) -> None:
    busy = await account_with_key(runtime, calls_per_minute=1)
    calm = await account_with_key(runtime, calls_per_minute=1)
    assert (await client.get("/api/v1/credits", headers=busy.headers)).status_code == 200
    assert (await client.get("/api/v1/credits", headers=busy.headers)).status_code == 429
    assert (await client.get("/api/v1/credits", headers=calm.headers)).status_code == 200


async def test_submit_over_the_concurrent_jobs_limit_is_concurrency_limit(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime, concurrent_jobs=2)
    for _ in range(2):
        assert (await submit(client, acct, LOCAL_IMAGE)).status_code == 201
    before = await trace(runtime, acct.id)
    response = await submit(client, acct, LOCAL_IMAGE)
    assert_error(response, 429, "CONCURRENCY_LIMIT", {"limit": 2}, balance=15000 - 4)
    assert "retry-after" not in response.headers
    await assert_unchanged(runtime, acct.id, before)


# -- 503 PROVIDER_DOWN ------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        GROK,
        {"model": "wan-2.7-text-to-video", "prompt": "waves"},
        {"model": "seedream-4", "prompt": "a teapot"},
    ],
    ids=lambda body: body["model"],
)
async def test_model_without_a_configured_provider_is_provider_down_not_configured(
    runtime: Runtime, client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    acct = await account_with_key(runtime)
    before = await trace(runtime, acct.id)
    response = await submit(client, acct, body)
    error = assert_error(
        response, 503, "PROVIDER_DOWN", {"reason": "not_configured"}, balance=15000
    )
    # Retrying can never help until the operator configures a provider: no Retry-After.
    assert "retry-after" not in response.headers
    assert "operator" in error["next"]
    await assert_unchanged(runtime, acct.id, before)


# -- Check order on POST /generate: the earlier fault wins ------------------------------


async def test_missing_auth_wins_over_everything(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    response = await client.post(
        GENERATE, content=b"{bad json" + b" " * MAX_BODY, headers={"Content-Type": "text/plain"}
    )
    assert_error(response, 401, "UNAUTHORIZED")


async def test_rate_limit_wins_over_tier_lock(runtime: Runtime, client: httpx.AsyncClient) -> None:
    acct = await account_with_key(runtime, tier="free", calls_per_minute=1)
    first = await client.get("/api/v1/credits", headers=acct.headers)
    assert_error(first, 403, "TIER_LOCKED", {"tier": "free"}, balance=0)
    response = await submit(client, acct, LOCAL_IMAGE)
    assert_error(response, 429, "RATE_LIMIT", {"retry_after": ...}, balance=0)


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"{bad json", "application/json"),
        (json.dumps(LOCAL_IMAGE).encode(), "text/plain"),
        (padded_body(MAX_BODY + 1), "application/json"),
        (json.dumps({"model": "no-such-model"}).encode(), "application/json"),
    ],
    ids=["bad-json", "wrong-content-type", "too-large", "unknown-model"],
)
async def test_tier_lock_wins_over_body_faults(
    runtime: Runtime, client: httpx.AsyncClient, content: bytes, content_type: str
) -> None:
    acct = await account_with_key(runtime, tier="free")
    before = await trace(runtime, acct.id)
    response = await client.post(
        GENERATE, content=content, headers={**acct.headers, "Content-Type": content_type}
    )
    assert_error(response, 403, "TIER_LOCKED", {"tier": "free"}, balance=0)
    await assert_unchanged(runtime, acct.id, before)


async def test_unknown_model_wins_over_bad_params(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime)
    # The model comes after the bad params in the body: existence is still checked first.
    body = {"prompt": "", "duration": "long", "colour": "red", "model": "no-such-model"}
    response = await submit(client, acct, body)
    assert_error(response, 404, "MODEL_NOT_FOUND", {"model": "no-such-model"}, balance=15000)


async def test_bad_params_win_over_a_disallowed_model(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime)
    await admin.set_models(runtime, acct.name, ["vivix-local-image"], allow=False)
    response = await submit(client, acct, {**LOCAL_IMAGE, "resolution": "8K"})
    assert_error(
        response, 422, "INVALID_PARAMS", {"field": "resolution", "reason": ...}, balance=15000
    )


async def test_disallowed_model_wins_over_insufficient_credits(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime, credits=0)
    await admin.set_models(runtime, acct.name, ["vivix-local-image"], allow=False)
    response = await submit(client, acct, LOCAL_IMAGE)
    assert_error(response, 403, "MODEL_NOT_ALLOWED", {"model": "vivix-local-image"}, balance=0)


async def test_disallowed_model_wins_over_provider_down(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime)
    await admin.set_models(runtime, acct.name, ["grok-imagine-image-quality"], allow=False)
    response = await submit(client, acct, GROK)
    assert_error(
        response, 403, "MODEL_NOT_ALLOWED", {"model": "grok-imagine-image-quality"}, balance=15000
    )


async def test_provider_down_wins_over_concurrency_limit(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime, concurrent_jobs=1)
    assert (await submit(client, acct, LOCAL_IMAGE)).status_code == 201
    before = await trace(runtime, acct.id)
    response = await submit(client, acct, GROK)
    assert_error(response, 503, "PROVIDER_DOWN", {"reason": "not_configured"}, balance=15000 - 2)
    await assert_unchanged(runtime, acct.id, before)


async def test_provider_down_wins_over_insufficient_credits(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime, credits=0)
    response = await submit(client, acct, GROK)
    assert_error(response, 503, "PROVIDER_DOWN", {"reason": "not_configured"}, balance=0)


async def test_concurrency_limit_wins_over_insufficient_credits(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime, credits=2, concurrent_jobs=1)
    assert (await submit(client, acct, LOCAL_IMAGE)).status_code == 201
    before = await trace(runtime, acct.id)
    response = await submit(client, acct, LOCAL_IMAGE)
    assert_error(response, 429, "CONCURRENCY_LIMIT", {"limit": 1}, balance=0)
    await assert_unchanged(runtime, acct.id, before)


# -- Headers every response carries ---------------------------------------------------


async def test_sane_incoming_request_id_is_echoed(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime)
    for incoming in ["my-trace.id:42_A", "a", "x" * 128, "req_0123456789abcdefghij"]:
        ok = await client.get("/api/v1/credits", headers={**acct.headers, "X-Request-Id": incoming})
        assert ok.headers["x-request-id"] == incoming
        failed = await client.get("/api/v1/credits", headers={"X-Request-Id": incoming})
        assert failed.headers["x-request-id"] == incoming
        assert failed.json()["request_id"] == incoming


async def test_insane_incoming_request_id_is_replaced(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime)
    for incoming in [
        b"x" * 129,
        b"has space",
        b"semi;colon",
        b"slash/path",
        b'quote"d',
        "ünïcode".encode(),
        b"",
    ]:
        response = await client.post(
            GENERATE,
            json={"model": "no-such-model"},
            headers={**acct.headers, "X-Request-Id": incoming},
        )
        assert response.status_code == 404
        request_id = response.headers["x-request-id"]
        assert request_id.encode() != incoming
        assert request_id.startswith("req_")
        assert len(request_id) > len("req_")
        assert request_id[4:].isalnum()
        assert response.json()["request_id"] == request_id


async def test_request_ids_are_unique_per_request(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime)
    seen = {
        (await client.get("/api/v1/credits", headers=acct.headers)).headers["x-request-id"]
        for _ in range(5)
    }
    assert len(seen) == 5


async def test_credits_balance_header_is_a_plain_integer(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime, credits=1_234_567)
    response = await submit(client, acct, LOCAL_IMAGE)
    assert response.status_code == 201
    assert response.headers["x-credits-balance"] == "1234565"
    read = await client.get("/api/v1/credits", headers=acct.headers)
    assert read.headers["x-credits-balance"] == "1234565"
    assert read.json()["balance"] == 1_234_565


async def test_successful_calls_carry_the_account_headers(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime, calls_per_minute=7)
    remaining = []
    for path in ("/api/v1/models", "/api/v1/credits", "/api/v1/generations"):
        response = await client.get(path, headers=acct.headers)
        assert response.status_code == 200
        assert response.headers["x-credits-balance"] == "15000"
        assert response.headers["x-ratelimit-limit"] == "7"
        assert response.headers["x-request-id"].startswith("req_")
        remaining.append(int(response.headers["x-ratelimit-remaining"]))
    assert remaining == [6, 5, 4]


# -- 500 INTERNAL_ERROR (unreachable by design: provoked with a route added for the test) --


async def test_unexpected_fault_is_internal_error_without_trace_or_secrets(
    runtime: Runtime,
) -> None:
    acct = await account_with_key(runtime)
    app = create_app(runtime.settings, runtime=runtime)

    async def broken(request: Request) -> None:
        async with runtime.db.autocommit() as connection:
            await authorize(request, connection)  # the account headers are known when it breaks
        secret_in_scope = acct.key
        raise RuntimeError(f"boom after reading {len(secret_in_scope)} chars")

    app.add_api_route("/api/v1/broken-for-test", broken)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        with structlog.testing.capture_logs() as logs:
            response = await http.get("/api/v1/broken-for-test", headers=acct.headers)
    assert_error(response, 500, "INTERNAL_ERROR", balance=15000)
    assert "Traceback" not in response.text
    assert "boom" not in response.text
    (entry,) = [e for e in logs if e["event"] == "unhandled_error"]
    assert entry["request_id"] == response.headers["x-request-id"]
    assert "RuntimeError: boom" in entry["exception"]
    assert acct.key not in repr(logs)
