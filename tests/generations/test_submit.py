from __future__ import annotations

import httpx

from tests.audit import assert_ledger_consistent
from tests.factories import account_with_key
from vivix.runtime import Runtime

IMAGE = {
    "model": "vivix-local-image",
    "prompt": "a misty forest at dawn",
    "aspect_ratio": "16:9",
    "resolution": "2K",
}


async def test_submit_local_image_holds_the_estimate(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime, credits=100)
    response = await client.post("/api/v1/generate", json=IMAGE, headers=acct.headers)
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"generation_id", "status", "model", "credits_estimate", "created_at"}
    assert body["status"] == "pending"
    assert body["model"] == "vivix-local-image"
    assert body["credits_estimate"] == 4
    assert body["created_at"].endswith("Z")
    assert response.headers["location"] == f"/api/v1/generations/{body['generation_id']}"
    assert response.headers["x-credits-balance"] == "96"
    assert response.headers["x-request-id"].startswith("req_")
    assert response.headers["x-ratelimit-remaining"] == "239"
    assert response.headers["x-ratelimit-limit"] == "240"
    assert 1 <= int(response.headers["x-ratelimit-reset"]) <= 60

    credits = (await client.get("/api/v1/credits", headers=acct.headers)).json()
    assert credits["balance"] == 96
    assert credits["held"] == 4
    await assert_ledger_consistent(runtime)
