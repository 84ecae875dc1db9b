"""A submitted generation finishes: rendered, stored, settled exactly once."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import av
import httpx
import pytest
from PIL import Image
from sqlalchemy import select

from tests.audit import assert_ledger_consistent
from tests.factories import account_with_key
from tests.worker.helpers import wait_for_status
from vivix.models import LedgerEntry
from vivix.runtime import Runtime
from vivix.worker.runner import Worker


async def submit(client: httpx.AsyncClient, headers: dict[str, str], body: dict[str, Any]) -> str:
    response = await client.post("/api/v1/generate", json=body, headers=headers)
    assert response.status_code == 201, response.text
    generation_id: str = response.json()["generation_id"]
    return generation_id


async def download(client: httpx.AsyncClient, url: str) -> httpx.Response:
    response = await client.get(url)  # public: no Authorization header
    assert response.status_code == 200, url
    return response


async def test_image_with_four_results_completes_and_each_output_decodes_at_the_requested_size(
    runtime: Runtime, client: httpx.AsyncClient, worker: Worker
) -> None:
    acct = await account_with_key(runtime, credits=1000)
    generation_id = await submit(
        client,
        acct.headers,
        {
            "model": "vivix-local-image",
            "prompt": "a misty forest at dawn",
            "aspect_ratio": "16:9",
            "resolution": "1K",
            "number_results": 4,
        },
    )
    body = await wait_for_status(client, generation_id, acct.headers)
    assert body["status"] == "completed", body
    assert len(body["output_urls"]) == 4
    assert body["output_url"] == body["output_urls"][0]
    assert len(set(body["output_urls"])) == 4
    assert body["credits_used"] == 2 * 4
    assert body["duration_ms"] >= 0
    assert body["completed_at"].endswith("Z")
    digests = set()
    for url, output in zip(body["output_urls"], body["outputs"], strict=True):
        response = await download(client, url)
        assert response.headers["content-type"] == "image/png"
        assert int(response.headers["content-length"]) == output["bytes"] == len(response.content)
        image = Image.open(io.BytesIO(response.content))
        assert image.size == (1024, 576) == (output["width"], output["height"])
        digests.add(response.content)
    assert len(digests) == 4, "each result is a distinct variation"
    credits = (await client.get("/api/v1/credits", headers=acct.headers)).json()
    assert credits["balance"] == 1000 - 8
    assert credits["held"] == 0
    assert credits["spent_this_cycle"] == 8
    await assert_ledger_consistent(runtime)


async def test_video_with_audio_and_audio_file_decode_to_the_requested_duration(
    runtime: Runtime, client: httpx.AsyncClient, worker: Worker
) -> None:
    acct = await account_with_key(runtime, credits=1000)
    video_id = await submit(
        client,
        acct.headers,
        {
            "model": "vivix-local-video",
            "prompt": "neon city at night",
            "duration": 2,
            "resolution": "720p",
            "aspect_ratio": "16:9",
            "audio": True,
        },
    )
    audio_id = await submit(
        client, acct.headers, {"model": "vivix-local-audio", "prompt": "calm rain", "duration": 3}
    )
    video = await wait_for_status(client, video_id, acct.headers)
    audio = await wait_for_status(client, audio_id, acct.headers)
    assert video["status"] == audio["status"] == "completed", (video, audio)

    response = await download(client, video["output_url"])
    assert response.headers["content-type"] == "video/mp4"
    with av.open(io.BytesIO(response.content)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (1280, 720)
        assert stream.codec_context.name == "h264"
        assert [s.codec_context.name for s in container.streams.audio] == ["aac"]
        assert container.duration is not None
        assert abs(container.duration / 1_000_000 - 2.0) < 0.15

    response = await download(client, audio["output_url"])
    assert response.headers["content-type"] == "audio/mpeg"
    with av.open(io.BytesIO(response.content)) as container:
        assert container.duration is not None
        assert abs(container.duration / 1_000_000 - 3.0) < 0.15
    await assert_ledger_consistent(runtime)


@pytest.mark.parametrize(
    "request_body",
    [
        {"model": "vivix-local-image", "prompt": "lighthouse in a storm", "number_results": 2},
        {
            "model": "vivix-local-video",
            "prompt": "lanterns over a river",
            "duration": 1,
            "resolution": "720p",
            "aspect_ratio": "1:1",
            "audio": True,
        },
        {"model": "vivix-local-audio", "prompt": "birdsong at dawn", "duration": 2},
    ],
    ids=["image", "video-with-audio", "audio"],
)
async def test_same_seed_gives_identical_bytes_and_another_seed_differs(
    runtime: Runtime, client: httpx.AsyncClient, worker: Worker, request_body: dict[str, Any]
) -> None:
    acct = await account_with_key(runtime, credits=1000)
    same = {**request_body, "seed": 42}
    first, second, other = (
        await submit(client, acct.headers, same),
        await submit(client, acct.headers, same),
        await submit(client, acct.headers, {**request_body, "seed": 43}),
    )
    outputs = []
    for generation_id in (first, second, other):
        body = await wait_for_status(client, generation_id, acct.headers)
        assert body["status"] == "completed"
        assert body["params"]["seed"] in (42, 43)
        outputs.append([(await download(client, url)).content for url in body["output_urls"]])
    assert outputs[0] == outputs[1], "same request, same seed: byte-identical outputs"
    assert all(a != b for a, b in zip(outputs[0], outputs[2], strict=True))


async def test_omitted_seed_is_recorded_and_reproduces_the_output(
    runtime: Runtime, client: httpx.AsyncClient, worker: Worker
) -> None:
    acct = await account_with_key(runtime, credits=1000)
    first = await submit(client, acct.headers, {"model": "vivix-local-image", "prompt": "red kite"})
    body = await wait_for_status(client, first, acct.headers)
    seed = body["params"]["seed"]
    assert isinstance(seed, int)
    again = await submit(
        client, acct.headers, {"model": "vivix-local-image", "prompt": "red kite", "seed": seed}
    )
    body_again = await wait_for_status(client, again, acct.headers)
    assert (await download(client, body["output_url"])).content == (
        await download(client, body_again["output_url"])
    ).content


async def test_test_key_renders_a_provider_model_locally_and_charges_nothing(
    runtime: Runtime, client: httpx.AsyncClient, worker: Worker
) -> None:
    acct = await account_with_key(runtime, credits=500, test_key=True)
    response = await client.post(
        "/api/v1/generate",
        json={"model": "grok-imagine-image-quality", "prompt": "a red bicycle", "resolution": "1K"},
        headers=acct.headers,
    )
    assert response.status_code == 201, response.text
    assert response.json()["credits_estimate"] == 0
    body = await wait_for_status(client, response.json()["generation_id"], acct.headers)
    assert body["status"] == "completed"
    assert body["credits_used"] == 0
    image = Image.open(io.BytesIO((await download(client, body["output_url"])).content))
    assert image.size == (1024, 1024)
    credits = (await client.get("/api/v1/credits", headers=acct.headers)).json()
    assert credits["balance"] == 500
    async with runtime.db.read() as session:
        assert (
            list(
                (
                    await session.execute(
                        select(LedgerEntry).where(LedgerEntry.generation_id.is_not(None))
                    )
                ).scalars()
            )
            == []
        )


async def test_prefer_wait_returns_the_finished_generation(
    runtime: Runtime, client: httpx.AsyncClient, worker: Worker
) -> None:
    acct = await account_with_key(runtime, credits=1000)
    response = await client.post(
        "/api/v1/generate",
        json={"model": "vivix-local-image", "prompt": "tiny boat"},
        headers={**acct.headers, "Prefer": "wait=30"},
    )
    assert response.status_code == 201
    assert response.json()["status"] == "completed"
    assert response.json()["output_url"].startswith("http://testserver/files/")
    assert response.headers["preference-applied"] == "wait=30"


async def test_pending_generation_shows_queue_position_and_elapsed_time(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime, credits=1000)
    ids = [
        await submit(client, acct.headers, {"model": "vivix-local-image", "prompt": f"p{i}"})
        for i in range(3)
    ]
    bodies = [
        (await client.get(f"/api/v1/generations/{i}", headers=acct.headers)).json() for i in ids
    ]
    assert [b["queue_position"] for b in bodies] == [1, 2, 3]
    assert all(b["elapsed_ms"] >= 0 and b["status"] == "pending" for b in bodies)


@pytest.mark.parametrize("count", [6])
async def test_many_generations_all_complete_with_ledger_consistent(
    runtime: Runtime, client: httpx.AsyncClient, worker: Worker, count: int
) -> None:
    acct = await account_with_key(runtime, credits=1000, concurrent_jobs=count)
    ids = await asyncio.gather(
        *(
            submit(
                client,
                acct.headers,
                {"model": "vivix-local-audio", "prompt": f"tune {i}", "duration": 1},
            )
            for i in range(count)
        )
    )
    for generation_id in ids:
        assert (await wait_for_status(client, generation_id, acct.headers))["status"] == "completed"
    await assert_ledger_consistent(runtime)
