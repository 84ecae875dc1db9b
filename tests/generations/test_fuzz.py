"""Property tests: whatever a client sends, /api/v1 answers with a documented status and the
documented error shape, never a 500 (ARCHITECTURE.md invariant 6)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, timedelta, timezone
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.audit import assert_ledger_consistent
from tests.factories import AccountWithKey, account_with_key
from vivix.runtime import Runtime

GENERATE = "/api/v1/generate"
SLUGS = [
    "vivix-local-image",
    "vivix-local-video",
    "vivix-local-audio",
    "grok-imagine-image-quality",
    "wan-2.7-text-to-video",
    "seedream-4",
]
# Documented error code → status (API.md §2), and the extra fields each one carries.
ERRORS: dict[str, tuple[int, set[str]]] = {
    "INVALID_JSON": (400, set()),
    "INSUFFICIENT_CREDITS": (402, {"balance", "needed"}),
    "TIER_LOCKED": (403, {"tier"}),
    "MODEL_NOT_ALLOWED": (403, {"model"}),
    "MODEL_NOT_FOUND": (404, {"model"}),
    "GENERATION_NOT_FOUND": (404, set()),
    "NOT_FOUND": (404, set()),
    "IDEMPOTENCY_CONFLICT": (409, set()),
    "PAYLOAD_TOO_LARGE": (413, set()),
    "UNSUPPORTED_MEDIA_TYPE": (415, set()),
    "INVALID_PARAMS": (422, {"field", "reason"}),
    "RATE_LIMIT": (429, {"retry_after"}),
    "CONCURRENCY_LIMIT": (429, {"limit"}),
    "PROVIDER_DOWN": (503, {"reason"}),
}
FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


async def public_dns(host: str, port: int, /) -> list[str]:
    """Stands in for the internet's DNS (reference image hosts are resolved at submit)."""
    return ["93.184.215.14"]


@pytest.fixture
async def acct(runtime: Runtime) -> AccountWithKey:
    runtime.resolver = public_dns
    return await account_with_key(
        runtime, credits=1_000_000_000, calls_per_minute=100_000, concurrent_jobs=100_000
    )


def check_response(response: httpx.Response, success: set[int]) -> None:
    """A documented success status, or a documented error with the documented shape."""
    assert response.status_code != 500, response.text
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    request_id = response.headers["x-request-id"]
    if response.status_code in success:
        assert "error" not in body
        return
    assert isinstance(body, dict), body
    assert body.get("error") in ERRORS, body
    status, extra = ERRORS[body["error"]]
    assert response.status_code == status, body
    assert set(body) == {"error", "message", "next", "request_id"} | extra, body
    assert body["request_id"] == request_id
    assert isinstance(body["message"], str)
    assert body["message"]
    assert isinstance(body["next"], str)
    assert body["next"]
    if body["error"] == "INVALID_PARAMS":
        assert isinstance(body["field"], str)
        assert isinstance(body["reason"], str)
        assert body["reason"]
    if body["error"] == "RATE_LIMIT" or body.get("reason") == "circuit_open":
        assert response.headers["retry-after"].isdigit()
    if body.get("reason") == "not_configured":
        assert "retry-after" not in response.headers


def check_submit(response: httpx.Response) -> None:
    check_response(response, {200, 201})
    if response.status_code in (200, 201):
        body = response.json()
        assert body["status"] == "pending"
        assert body["model"] in SLUGS
        assert isinstance(body["credits_estimate"], int)
        assert body["credits_estimate"] >= 0
        assert response.headers["location"] == f"/api/v1/generations/{body['generation_id']}"


# -- strategies --------------------------------------------------------------------------

# Text including lone surrogates (JSON can escape them; they are not characters).
texts = st.text(max_size=30) | st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2)
json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats() | texts | st.integers(-(2**70), 2**70)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=12,
)
plausible_values: dict[str, st.SearchStrategy[Any]] = {
    "prompt": st.text(max_size=40) | st.just("x" * 2001) | st.just("   "),
    "negative_prompt": st.text(max_size=20) | st.just("n" * 501),
    "aspect_ratio": st.sampled_from(["1:1", "4:5", "9:16", "16:9", "3:2"]),
    "resolution": st.sampled_from(["1K", "2K", "4K", "720p", "1080p", "2160p", "8K"]),
    "duration": st.integers(-1, 35) | st.floats(0, 12),
    "audio": st.booleans() | st.sampled_from(["true", 1, 0]),
    "seed": st.integers(-1, 2**32) | st.floats(allow_nan=True, allow_infinity=True),
    "number_results": st.integers(-1, 6),
    "output_format": st.sampled_from(["png", "jpeg", "mp3", "wav", "gif"]),
    "reference_images": st.lists(
        st.sampled_from(
            [
                "https://93.184.215.14/a.png",
                "https://images.example.com/b.jpg",
                "ftp://x/y",
                "javascript:alert(1)",
                "not a url",
            ]
        ),
        max_size=4,
    ),
    "metadata": st.dictionaries(st.text(max_size=70), st.text(max_size=20), max_size=18),
}
valid_and_junk_bodies = st.builds(
    lambda base, extra: {**extra, **base},
    st.fixed_dictionaries(
        {"model": st.sampled_from(SLUGS) | json_values},
        optional={name: strategy | json_values for name, strategy in plausible_values.items()},
    ),
    st.dictionaries(texts, json_values, max_size=2),
)
content_types = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/problem+json",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
        "",
        "application/json;",
        ";",
    ]
) | st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)


# -- POST /generate --------------------------------------------------------------------


@FUZZ
@given(body=json_values)
async def test_any_json_value_as_body_gets_a_documented_answer(
    runtime: Runtime, client: httpx.AsyncClient, acct: AccountWithKey, body: Any
) -> None:
    response = await client.post(
        GENERATE,
        content=json.dumps(body),
        headers={**acct.headers, "Content-Type": "application/json"},
    )
    check_submit(response)
    if not isinstance(body, dict):
        assert response.json()["error"] == "INVALID_JSON"


@FUZZ
@given(body=valid_and_junk_bodies, idempotency_key=st.none() | st.text(max_size=300))
async def test_mixtures_of_valid_and_junk_params_get_a_documented_answer(
    runtime: Runtime,
    client: httpx.AsyncClient,
    acct: AccountWithKey,
    body: dict[str, Any],
    idempotency_key: str | None,
) -> None:
    headers = {**acct.headers, "Content-Type": "application/json"}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key.encode()  # type: ignore[assignment]
    response = await client.post(GENERATE, content=json.dumps(body), headers=headers)
    check_submit(response)


@FUZZ
@given(raw=st.binary(max_size=300), content_type=content_types)
async def test_random_bytes_with_random_content_types_get_a_documented_answer(
    runtime: Runtime, client: httpx.AsyncClient, acct: AccountWithKey, raw: bytes, content_type: str
) -> None:
    response = await client.post(
        GENERATE, content=raw, headers={**acct.headers, "Content-Type": content_type}
    )
    check_submit(response)


@FUZZ
@given(body=valid_and_junk_bodies, content_type=content_types)
async def test_plausible_bodies_with_random_content_types_get_a_documented_answer(
    runtime: Runtime,
    client: httpx.AsyncClient,
    acct: AccountWithKey,
    body: dict[str, Any],
    content_type: str,
) -> None:
    response = await client.post(
        GENERATE, content=json.dumps(body), headers={**acct.headers, "Content-Type": content_type}
    )
    check_submit(response)
    media_type = content_type.split(";")[0].strip().lower()
    if media_type != "application/json" and not (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        assert response.json()["error"] == "UNSUPPORTED_MEDIA_TYPE"


async def test_fuzzed_submits_leave_the_ledger_consistent(
    runtime: Runtime, client: httpx.AsyncClient, acct: AccountWithKey
) -> None:
    # One deterministic pass of a few valid and invalid bodies, then the money audit.
    for body in (
        {"model": "vivix-local-image", "prompt": "x", "number_results": 4, "resolution": "4K"},
        {"model": "vivix-local-video", "prompt": "x", "duration": 10},
        {"model": "vivix-local-image", "prompt": ""},
        {"model": "seedream-4", "prompt": "x"},
    ):
        check_submit(await client.post(GENERATE, json=body, headers=acct.headers))
    await assert_ledger_consistent(runtime)


# -- GET /generations (list) and /generations/{id} ---------------------------------------

any_text = st.text(st.characters(codec="utf-8"), max_size=30)  # what a URL can carry
offsets = st.builds(
    lambda minutes: timezone(timedelta(minutes=minutes)), st.integers(-23 * 60, 23 * 60)
)
timestamps = st.datetimes(timezones=st.just(UTC) | offsets).map(
    lambda moment: moment.isoformat().replace("+00:00", "Z")
)
cursors = st.uuids().map(lambda u: quote(str(u))) | st.builds(
    lambda u: base64.urlsafe_b64encode(str(u).encode()).decode().rstrip("="),
    st.uuids(),
)
query_pairs = st.lists(
    st.one_of(
        st.tuples(st.just("limit"), st.integers(-5, 150).map(str) | any_text),
        st.tuples(st.just("cursor"), cursors | any_text),
        st.tuples(
            st.just("status"),
            st.sampled_from(["pending", "processing", "completed", "failed", "canceled"])
            | any_text,
        ),
        st.tuples(st.sampled_from(["created_after", "created_before"]), timestamps | any_text),
        st.tuples(st.just("model"), st.sampled_from(SLUGS) | any_text),
        st.tuples(any_text.map(lambda key: f"metadata[{key}]"), any_text),
        st.tuples(any_text, any_text),
    ),
    max_size=6,
)


@pytest.fixture
async def with_history(
    runtime: Runtime, client: httpx.AsyncClient, acct: AccountWithKey
) -> AccountWithKey:
    for index in range(3):
        body = {"model": "vivix-local-image", "prompt": "x", "metadata": {"k": str(index)}}
        assert (await client.post(GENERATE, json=body, headers=acct.headers)).status_code == 201
    return acct


@FUZZ
@given(pairs=query_pairs)
async def test_any_list_query_gets_a_page_or_a_422(
    client: httpx.AsyncClient, with_history: AccountWithKey, pairs: list[tuple[str, str]]
) -> None:
    response = await client.get("/api/v1/generations", params=pairs, headers=with_history.headers)
    check_response(response, {200})
    body = response.json()
    if response.status_code == 200:
        assert set(body) == {"data", "next_cursor", "has_more"}
        assert len(body["data"]) <= 100
        assert isinstance(body["has_more"], bool)
        assert (body["next_cursor"] is not None) == body["has_more"]
    else:
        assert response.status_code == 422
        names = {"limit", "cursor", "status", "created_after", "created_before", "model"}
        assert body["field"] in names or body["field"].startswith("metadata["), body


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# "/" is excluded: an id with a slash is another route (and a trailing one redirects);
# so are "." and "..": the client resolves those dot segments (RFC 3986) before sending.
@given(
    generation_id=st.text(
        st.characters(exclude_characters="/", codec="utf-8"), min_size=1, max_size=40
    ).filter(lambda text: text not in {".", ".."})
)
async def test_any_generation_id_gets_the_generation_or_a_404(
    client: httpx.AsyncClient, acct: AccountWithKey, generation_id: str
) -> None:
    # "." and ".." are dot segments: URL clients resolve them away (to another route).
    assume(generation_id not in (".", ".."))
    path = "/api/v1/generations/" + quote(generation_id, safe="")
    response = await client.get(path, headers=acct.headers)
    check_response(response, set())
    assert response.status_code == 404
    assert response.json()["error"] in {"GENERATION_NOT_FOUND", "NOT_FOUND"}
