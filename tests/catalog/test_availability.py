"""The honest catalog (API.md §3 [ext]): each model says whether it can take work now and
why not; `GET /api/v1/models/{slug}` returns one; PROVIDER_DOWN agrees with the listing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.factories import account_with_key
from vivix.admin import service as admin
from vivix.runtime import Runtime

LOCAL_MODELS = {"vivix-local-image", "vivix-local-video", "vivix-local-audio"}


@pytest.fixture
def settings_overrides(tmp_path: Path) -> dict[str, object]:
    # fal configured, nothing else: models with a fal route can run, the rest cannot.
    return {"providers": {"fal": {"api_key": "fal-test-key"}}}


def by_slug(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["slug"]: m for m in body["models"]}


async def test_listing_says_which_models_can_run_on_this_server(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime)
    models = by_slug((await client.get("/api/v1/models", headers=acct.headers)).json())
    for slug in LOCAL_MODELS | {"wan-2.7-text-to-video", "grok-imagine-image-quality"}:
        assert (models[slug]["available"], models[slug]["unavailable_reason"]) == (True, None)
    # gpt-image-1 routes only to OpenAI, sdxl only to a self-hosted ComfyUI: neither is set up.
    for slug in ("gpt-image-1", "sdxl"):
        assert (models[slug]["available"], models[slug]["unavailable_reason"]) == (
            False,
            "not_configured",
        )


async def test_submit_to_an_unconfigured_model_agrees_with_the_listing(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime)
    response = await client.post(
        "/api/v1/generate",
        json={"model": "gpt-image-1", "prompt": "a lighthouse"},
        headers=acct.headers,
    )
    assert response.status_code == 503
    assert response.json()["error"] == "PROVIDER_DOWN"
    assert response.json()["reason"] == "not_configured"
    assert "retry-after" not in response.headers


async def test_a_test_key_sees_every_model_available(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime, test_key=True)
    models = (await client.get("/api/v1/models", headers=acct.headers)).json()["models"]
    assert models
    assert all(m["available"] and m["unavailable_reason"] is None for m in models)


async def test_one_model_by_slug_is_the_listing_entry(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime)
    listing = by_slug((await client.get("/api/v1/models", headers=acct.headers)).json())
    response = await client.get("/api/v1/models/vivix-local-image", headers=acct.headers)
    assert response.status_code == 200
    assert response.json() == listing["vivix-local-image"]
    assert response.headers["x-credits-balance"] == "15000"


@pytest.mark.parametrize("slug", ["no-such-model", "gpt-image-1"], ids=["unknown", "not-allowed"])
async def test_unknown_or_not_allowed_slug_is_model_not_found(
    runtime: Runtime, client: httpx.AsyncClient, slug: str
) -> None:
    acct = await account_with_key(runtime)
    await admin.set_models(runtime, acct.name, ["gpt-image-1"], allow=False)
    assert slug not in by_slug((await client.get("/api/v1/models", headers=acct.headers)).json())
    response = await client.get(f"/api/v1/models/{slug}", headers=acct.headers)
    assert response.status_code == 404
    body = response.json()
    assert (body["error"], body["model"]) == ("MODEL_NOT_FOUND", slug)


async def test_one_model_needs_a_key(runtime: Runtime, client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/models/vivix-local-image")
    assert response.status_code == 401
    assert response.json()["error"] == "UNAUTHORIZED"
