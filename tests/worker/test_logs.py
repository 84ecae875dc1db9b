"""Structured logs: with VIVIX_LOG_FORMAT=json every line on stderr is one JSON object, and
every line of a request or of the job it started carries request_id, account_id and
generation_id. No prompt and no key ever appears."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.factories import account_with_key
from tests.worker.conftest import FAST_WORKER
from tests.worker.helpers import wait_for_status
from vivix.kit.logging import configure_logging
from vivix.runtime import Runtime
from vivix.worker.runner import Worker

PROMPT = "a lighthouse painted by a very secret prompt 7f3a"


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {"worker": FAST_WORKER, "log_format": "json", "log_level": "debug"}


def _lines(text: str) -> list[dict[str, Any]]:
    lines = [line for line in text.splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # every line is JSON, or this fails


async def test_request_and_job_lines_carry_their_ids_and_no_prompt_or_key(
    runtime: Runtime,
    client: httpx.AsyncClient,
    worker: Worker,
    capsys: pytest.CaptureFixture[str],
) -> None:
    acct = await account_with_key(runtime, credits=100)
    capsys.readouterr()
    headers = {**acct.headers, "X-Request-Id": "req-logs-0001"}
    response = await client.post(
        "/api/v1/generate", json={"model": "vivix-local-image", "prompt": PROMPT}, headers=headers
    )
    assert response.status_code == 201, response.text
    generation_id = response.json()["generation_id"]
    body = await wait_for_status(client, generation_id, acct.headers)
    assert body["status"] == "completed"
    bad = await client.post(
        "/api/v1/generate", json={"model": "no-such-model", "prompt": PROMPT}, headers=acct.headers
    )
    assert bad.status_code == 404
    text = capsys.readouterr().err
    lines = _lines(text)
    assert PROMPT not in text
    assert acct.key not in text
    assert acct.key[:20] not in text

    for line in lines:
        assert {"event", "level", "timestamp", "request_id", "account_id", "generation_id"} <= set(
            line
        ), line
    submit = [line for line in lines if line["event"] == "http_request" and line["status"] == 201]
    assert [(s["request_id"], s["account_id"], s["generation_id"]) for s in submit] == [
        ("req-logs-0001", acct.id, generation_id)
    ]
    job = [
        line
        for line in lines
        if line["event"] in {"job_started", "generation_ended"}
        and line["generation_id"] == generation_id
    ]
    assert [line["event"] for line in job] == ["job_started", "generation_ended"]
    for line in job:  # the worker's lines point back at the request that submitted the job
        assert (line["request_id"], line["account_id"]) == ("req-logs-0001", acct.id)
    reads = [line for line in lines if line.get("path") == f"/api/v1/generations/{generation_id}"]
    assert reads
    assert all(r["generation_id"] == generation_id for r in reads)
    refused = [line for line in lines if line["event"] == "http_request" and line["status"] == 404]
    assert len(refused) == 1
    assert refused[0]["account_id"] == acct.id
    assert refused[0]["generation_id"] is None
    assert refused[0]["request_id"] == bad.headers["x-request-id"]


def test_library_lines_are_json_too(capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    configure_logging("info", log_format="json")
    try:
        logging.getLogger("uvicorn.error").info("Application startup complete.")
        (line,) = _lines(capsys.readouterr().err)
        assert line["event"] == "Application startup complete."
        assert line["level"] == "info"
    finally:
        configure_logging("info")
