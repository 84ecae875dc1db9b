"""The asynchronous SDK against a real `vivix serve`."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from PIL import Image

from tests.live.conftest import BROKEN_MODEL, LiveServer
from tests.live.sdk import AsyncRecordingTransport
from vivix_client import AsyncVivix, Generation, GenerationFailed, ModelNotFound


def client_for(live_server: LiveServer, key: str) -> AsyncVivix:
    return AsyncVivix(key, base_url=live_server.base_url, transport=AsyncRecordingTransport())


async def test_async_run_with_a_coroutine_callback_then_download(
    live_server: LiveServer, tmp_path: Path
) -> None:
    account = live_server.account()
    seen: list[Generation] = []

    async def on_progress(generation: Generation) -> None:
        seen.append(generation)

    async with client_for(live_server, account.key) as client:
        generation = await client.run(
            "vivix-local-image", "a desert at noon", resolution="1K", on_progress=on_progress
        )
        assert generation.succeeded
        assert seen[-1].status == "completed"
        (path,) = await client.download(generation, tmp_path)
        with Image.open(path) as image:
            image.load()
            assert image.size == (generation.outputs[0].width, generation.outputs[0].height)
        assert (await client.credits()).balance == 15000 - (generation.credits_used or 0)


async def test_async_list_get_cancel_and_models(live_server: LiveServer) -> None:
    account = live_server.account(test_key=True, concurrent_jobs=10)
    tag = uuid.uuid4().hex
    async with client_for(live_server, account.key) as client:
        ids = [
            (await client.generate("vivix-local-audio", f"tone {i}", metadata={"t": tag})).id
            for i in range(3)
        ]
        listed = [g.id async for g in client.list(metadata={"t": tag}, page_size=2)]
        assert listed == ids[::-1]
        assert (await client.get(ids[0])).id == ids[0]
        assert {m.slug for m in await client.models()} >= {"vivix-local-image"}
        with pytest.raises(ModelNotFound) as raised:
            await client.model("no-such-model")
        assert raised.value.model == "no-such-model"


async def test_async_run_of_a_failing_model_raises_generation_failed_and_refunds(
    live_server: LiveServer,
) -> None:
    account = live_server.account()
    async with client_for(live_server, account.key) as client:
        with pytest.raises(GenerationFailed) as raised:
            await client.run(BROKEN_MODEL, "anything", timeout=120)
        failed = raised.value.generation
        assert failed.status == "failed"
        assert failed.error
        assert failed.credits_used == 0
        assert (await client.credits()).balance == 15000
