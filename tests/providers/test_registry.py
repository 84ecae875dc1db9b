"""The provider registry builds adapters from the operator's settings: only configured
providers, at the configured base URL, under the configured concurrency cap."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import cast

from tests.fakes.fal import FakeFal
from vivix.providers.base import RenderRequest
from vivix.providers.registry import KNOWN_PROVIDERS, build_registry, is_configured
from vivix.providers.replicate.adapter import ReplicateAdapter
from vivix.providers.upstream import UpstreamAdapter
from vivix.settings import load_settings


def test_only_configured_providers_get_an_adapter(tmp_path: Path) -> None:
    settings = load_settings(
        data_dir=tmp_path,
        providers={
            "FAL": {"api_key": "fal-key"},
            "replicate": {"base_url": "http://127.0.0.1:9"},  # a URL is not a credential
            "comfyui": {"base_url": "http://127.0.0.1:8188"},  # self-hosted: a URL is enough
        },
    )
    registry = build_registry(settings)

    built = {name for name in KNOWN_PROVIDERS if registry.get(name) is not None}
    assert built == {"local", "fal", "comfyui"}
    assert {name for name in KNOWN_PROVIDERS if is_configured(name, settings)} == built


async def test_the_configured_cap_limits_concurrent_calls_to_the_provider(
    tmp_path: Path,
) -> None:
    fal = FakeFal()
    fal.submit_gate = asyncio.Event()
    async with fal.serve() as base_url:
        settings = load_settings(
            data_dir=tmp_path,
            providers={"fal": {"api_key": fal.api_key, "base_url": base_url, "max_concurrency": 2}},
        )
        registry = build_registry(settings)
        adapter = registry.get("fal")
        assert adapter is not None
        requests = [
            RenderRequest(
                generation_id=f"gen-{i}",
                model="flux-schnell",
                category="image",
                upstream_model="fal-ai/flux/schnell",
                params={"prompt": f"picture {i}"},
            )
            for i in range(5)
        ]
        submits = [asyncio.create_task(adapter.submit(r)) for r in requests]
        async with asyncio.timeout(10):
            while True:
                if fal.submits_now == 2:
                    break
                await asyncio.sleep(0.01)
        for _ in range(20):  # the other three stay queued on our side, not upstream
            await asyncio.sleep(0.01)
            assert fal.submits_now == 2
        fal.submit_gate.set()
        handles = await asyncio.gather(*submits)
        await registry.aclose()

    assert len({h["request_id"] for h in handles}) == 5
    assert fal.submissions == 5
    assert fal.most_submits_at_once == 2


async def test_configured_adapters_share_one_outbound_client_the_registry_closes(
    tmp_path: Path,
) -> None:
    settings = load_settings(
        data_dir=tmp_path,
        providers={
            "fal": {"api_key": "fal-key", "timeout_seconds": 7},
            "replicate": {"api_key": "r8-key", "retries": 1, "prefer_wait_seconds": 5},
            "comfyui": {"base_url": "http://comfy.internal:8188"},
        },
    )
    registry = build_registry(settings)
    adapters = [registry.get(name) for name in ("fal", "replicate", "comfyui")]
    assert all(isinstance(adapter, UpstreamAdapter) for adapter in adapters)
    fal, replicate, comfyui = (cast(UpstreamAdapter, adapter) for adapter in adapters)
    clients = {id(adapter._http.client) for adapter in (fal, replicate, comfyui)}
    assert len(clients) == 1
    # Each adapter still has its own settings section: timeout, retries, base URL, auth.
    assert fal._http.timeout.read == 7
    assert replicate._http.retries == 1
    assert isinstance(replicate, ReplicateAdapter)
    assert replicate.prefer_wait_s == 5
    assert comfyui.base_url == "http://comfy.internal:8188"
    assert fal._http._auth_headers == {"Authorization": "Key fal-key"}
    assert comfyui._http._auth_headers == {}
    client = fal._http.client
    await registry.aclose()
    assert client.is_closed
