from __future__ import annotations

import asyncio
from typing import Any

import httpx

TERMINAL = {"completed", "failed", "canceled"}


async def wait_for_status(
    client: httpx.AsyncClient,
    generation_id: str,
    headers: dict[str, str],
    statuses: set[str] = TERMINAL,
    within_s: float = 60.0,
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    # Backing off keeps a long wait under the key's rate limit (pro: 240 calls a minute).
    delay = 0.05
    while True:
        response = await client.get(f"/api/v1/generations/{generation_id}", headers=headers)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if body["status"] in statuses:
            return body
        if loop.time() > deadline:
            raise AssertionError(f"still {body['status']} after {within_s}s: {body}")
        await asyncio.sleep(delay)
        delay = min(0.5, delay * 1.5)
