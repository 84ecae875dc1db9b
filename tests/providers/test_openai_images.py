"""The OpenAI images adapter against a fake of the OpenAI Images API.

Nothing leaves this machine: the fake runs in-process behind httpx.ASGITransport (at a
made-up host), or under uvicorn on 127.0.0.1 for the timeout and served-URL scenarios.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.fakes.openai_images import FakeOpenAiImages, ScriptedFailure, serve_on_loopback
from vivix.providers.base import (
    ProviderAdapter,
    ProviderFatalError,
    ProviderRejectedError,
    ProviderRetriableError,
    ReferenceImage,
    RenderRequest,
    UpstreamHandle,
)
from vivix.providers.openai import OpenAiImagesAdapter
from vivix.settings import ProviderSettings

BASE_URL = "https://images.compat.test"
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6300010000050001"
    "0d0a2db40000000049454e44ae426082"
)


def make_adapter(fake: FakeOpenAiImages, **overrides: Any) -> OpenAiImagesAdapter:
    settings: dict[str, Any] = {
        "api_key": fake.api_key,
        "base_url": BASE_URL,
        "retry_backoff_seconds": 0.001,
    }
    settings.update(overrides)
    return OpenAiImagesAdapter.standalone(
        ProviderSettings(**settings), transport=httpx.ASGITransport(app=fake.app)
    )


@pytest.fixture
def fake() -> FakeOpenAiImages:
    return FakeOpenAiImages()


@pytest.fixture
async def adapter(fake: FakeOpenAiImages) -> AsyncIterator[OpenAiImagesAdapter]:
    adapter = make_adapter(fake)
    yield adapter
    await adapter.aclose()


def image_request(
    *,
    upstream_model: str = "gpt-image-1",
    options: dict[str, Any] | None = None,
    references: list[ReferenceImage] | None = None,
    **params: Any,
) -> RenderRequest:
    return RenderRequest(
        generation_id="gen-image",
        model="gpt-image-1",
        category="image",
        upstream_model=upstream_model,
        params={
            "prompt": "a ceramic teapot on linen",
            "aspect_ratio": "1:1",
            "resolution": "1K",
            "number_results": 1,
            **params,
        },
        options=options or {},
        reference_images=references or [],
    )


def persisted(handle: UpstreamHandle) -> UpstreamHandle:
    """What the worker stores: everything but the in-memory result, through JSON."""
    stored: UpstreamHandle = json.loads(
        json.dumps({k: v for k, v in handle.items() if k != "result"})
    )
    return stored


def test_the_adapter_implements_the_protocol_with_openais_public_url() -> None:
    adapter = OpenAiImagesAdapter.standalone(
        ProviderSettings(api_key="k"), transport=httpx.MockTransport(lambda r: httpx.Response(500))
    )
    assert isinstance(adapter, ProviderAdapter)
    assert adapter.name == "openai"
    assert OpenAiImagesAdapter.default_base_url == "https://api.openai.com"


async def test_gpt_image_outputs_are_decoded_from_base64(
    adapter: OpenAiImagesAdapter, fake: FakeOpenAiImages
) -> None:
    request = image_request(number_results=3, aspect_ratio="16:9")
    handle = await adapter.submit(request)

    result = await adapter.poll(handle, request)

    assert [output.data for output in result.outputs] == fake.served
    assert len(set(fake.served)) == 3
    for output in result.outputs:
        assert (output.content_type, output.width, output.height) == ("image/png", 64, 48)
    # GPT image models reject response_format: it isn't sent unless the route asks.
    assert fake.bodies == [
        (
            "/v1/images/generations",
            {
                "model": "gpt-image-1",
                "prompt": "a ceramic teapot on linen",
                "n": 3,
                "size": "1536x1024",
            },
        )
    ]
    # Nothing of a base64 answer is persisted: a resumed attempt must submit again.
    with pytest.raises(ProviderRetriableError, match="generating again") as caught:
        await adapter.poll(persisted(handle), request)
    assert caught.value.resubmit is True


async def test_url_outputs_are_downloaded_and_survive_a_crash(fake: FakeOpenAiImages) -> None:
    request = image_request(
        upstream_model="dall-e-2", number_results=2, options={"response_format": "url"}
    )
    first = make_adapter(fake)
    stored = persisted(await first.submit(request))
    await first.aclose()

    second = make_adapter(fake)
    try:
        result = await second.poll(stored, request)
    finally:
        await second.aclose()

    assert [output.data for output in result.outputs] == fake.served
    assert result.outputs[0].content_type == "image/png"
    assert fake.bodies[0][1]["response_format"] == "url"
    assert fake.submissions == 1


async def test_url_outputs_that_expired_ask_for_a_new_submission(
    adapter: OpenAiImagesAdapter, fake: FakeOpenAiImages
) -> None:
    request = image_request(upstream_model="dall-e-2", options={"response_format": "url"})
    handle = persisted(await adapter.submit(request))
    fake.files.clear()  # past the URLs' 60 minutes

    with pytest.raises(ProviderRetriableError, match="404") as caught:
        await adapter.poll(handle, request)

    assert caught.value.resubmit is True


async def test_an_unreachable_url_output_is_downloaded_on_the_next_poll(
    adapter: OpenAiImagesAdapter, fake: FakeOpenAiImages
) -> None:
    request = image_request(upstream_model="dall-e-2", options={"response_format": "url"})
    handle = persisted(await adapter.submit(request))
    fake.file_failures.upcoming.extend([ScriptedFailure(502)] * 4)

    with pytest.raises(ProviderRetriableError, match="502") as caught:
        await adapter.poll(handle, request)
    assert caught.value.resubmit is False

    assert [output.data for output in (await adapter.poll(handle, request)).outputs] == fake.served
    assert fake.submissions == 1


async def test_b64_json_can_be_requested_from_dall_e(
    adapter: OpenAiImagesAdapter, fake: FakeOpenAiImages
) -> None:
    request = image_request(upstream_model="dall-e-3", options={"response_format": "b64_json"})
    result = await adapter.poll(await adapter.submit(request), request)

    assert [output.data for output in result.outputs] == fake.served


@pytest.mark.parametrize(
    ("upstream_model", "aspect_ratio", "size"),
    [
        ("gpt-image-1", "1:1", "1024x1024"),
        ("gpt-image-1", "4:5", "1024x1536"),
        ("gpt-image-1", "9:16", "1024x1536"),
        ("dall-e-3", "16:9", "1792x1024"),
        ("dall-e-3", "9:16", "1024x1792"),
    ],
)
async def test_aspect_ratios_map_to_each_models_sizes(
    adapter: OpenAiImagesAdapter,
    fake: FakeOpenAiImages,
    upstream_model: str,
    aspect_ratio: str,
    size: str,
) -> None:
    await adapter.submit(image_request(upstream_model=upstream_model, aspect_ratio=aspect_ratio))

    assert fake.bodies[0][1]["size"] == size


async def test_route_options_shape_the_body_for_compatible_servers(
    adapter: OpenAiImagesAdapter, fake: FakeOpenAiImages
) -> None:
    request = image_request(
        upstream_model="gpt-image-1-mini",
        aspect_ratio="16:9",
        resolution="2K",
        seed=42,
        negative_prompt="blurry",
        number_results=2,
        options={
            "size_map": {"16:9@2K": "auto", "16:9": "1536x1024"},
            "quality_map": {"1K": "low", "2K": "high"},
            "pass_params": ["seed"],
            "input": {"background": "opaque", "output_format": "png"},
        },
    )
    await adapter.submit(request)

    assert fake.bodies[0][1] == {
        "model": "gpt-image-1-mini",
        "prompt": "a ceramic teapot on linen",
        "n": 2,
        "size": "auto",  # the resolution-specific entry wins
        "quality": "high",
        "seed": 42,  # forwarded only because the route lists it
        "background": "opaque",
        "output_format": "png",
    }


async def test_reference_bytes_are_uploaded_to_the_edits_endpoint(
    adapter: OpenAiImagesAdapter, fake: FakeOpenAiImages
) -> None:
    request = image_request(
        references=[
            ReferenceImage("https://img.example/a.png", data=PNG, content_type="image/png"),
            ReferenceImage("https://img.example/b.png", data=PNG + b"2"),
        ],
    )
    result = await adapter.poll(await adapter.submit(request), request)

    assert result.outputs[0].data == fake.served[0]
    path, body = fake.bodies[0]
    assert path == "/v1/images/edits"
    assert body == {
        "model": "gpt-image-1",
        "prompt": "a ceramic teapot on linen",
        "n": 1,
        "size": "1024x1024",
    }
    assert [(upload.field, upload.content_type, upload.data) for upload in fake.uploads] == [
        ("image[]", "image/png", PNG),
        ("image[]", "image/png", PNG + b"2"),
    ]


async def test_references_without_bytes_are_sent_by_url(
    adapter: OpenAiImagesAdapter, fake: FakeOpenAiImages
) -> None:
    request = image_request(references=[ReferenceImage("https://img.example/a.png")])
    await adapter.submit(request)

    path, body = fake.bodies[0]
    assert path == "/v1/images/edits"
    assert body["images"] == [{"image_url": "https://img.example/a.png"}]
    assert fake.uploads == []


async def test_a_provider_error_fails_the_generation_without_blaming_content(
    adapter: OpenAiImagesAdapter, fake: FakeOpenAiImages
) -> None:
    # dall-e-3 renders one image per request; the upstream says so.
    with pytest.raises(ProviderRejectedError, match="n=1") as caught:
        await adapter.submit(image_request(upstream_model="dall-e-3", number_results=2))
    assert caught.value.content is False


@pytest.mark.parametrize("upstream_model", ["gpt-image-1", "dall-e-3"])
async def test_a_safety_refusal_is_a_content_rejection(
    adapter: OpenAiImagesAdapter, fake: FakeOpenAiImages, upstream_model: str
) -> None:
    fake.refuse_content = True  # moderation_blocked / content_policy_violation

    with pytest.raises(ProviderRejectedError) as caught:
        await adapter.submit(image_request(upstream_model=upstream_model))
    assert caught.value.content is True
    assert fake.submissions == 0


async def test_rate_limits_are_retried_after_the_announced_delay(
    adapter: OpenAiImagesAdapter, fake: FakeOpenAiImages
) -> None:
    fake.fail_next(429, times=2, retry_after="0.1")
    request = image_request()

    started = time.monotonic()
    result = await adapter.poll(await adapter.submit(request), request)

    assert time.monotonic() - started >= 0.19  # the backoff alone would be ~1 ms
    assert len(result.outputs) == 1
    assert (fake.post_attempts, fake.submissions) == (3, 1)


@pytest.mark.parametrize(
    "error",
    [
        {"type": "insufficient_quota", "code": "insufficient_quota"},
        {"type": "insufficient_quota", "code": "project_spend_limit_exceeded"},
        {"type": "requests", "code": "billing_hard_limit_reached"},
    ],
)
async def test_a_429_about_billing_is_fatal_at_once(
    adapter: OpenAiImagesAdapter, fake: FakeOpenAiImages, error: dict[str, str]
) -> None:
    # Same status as a rate limit, but waiting won't help: the route is unusable.
    message = "You exceeded your current quota, please check your plan and billing details."
    fake.fail_always(429, body={"error": {"message": message, "param": None, **error}})

    with pytest.raises(ProviderFatalError, match="exceeded your current quota"):
        await adapter.submit(image_request())

    assert (fake.post_attempts, fake.submissions) == (1, 0)


async def test_unavailable_then_available_submits_once(
    adapter: OpenAiImagesAdapter, fake: FakeOpenAiImages
) -> None:
    fake.fail_next(503, times=2)

    await adapter.submit(image_request())

    assert (fake.post_attempts, fake.submissions) == (3, 1)


async def test_a_server_error_on_submit_is_not_resent(
    adapter: OpenAiImagesAdapter, fake: FakeOpenAiImages
) -> None:
    fake.fail_next(500)

    with pytest.raises(ProviderRetriableError):
        await adapter.submit(image_request())
    assert fake.post_attempts == 1


async def test_persistent_unavailability_is_retriable(fake: FakeOpenAiImages) -> None:
    fake.fail_always(503)
    adapter = make_adapter(fake, retries=2)
    try:
        with pytest.raises(ProviderRetriableError, match="503"):
            await adapter.submit(image_request())
    finally:
        await adapter.aclose()
    assert (fake.post_attempts, fake.submissions) == (3, 0)


async def test_a_timed_out_submit_is_never_sent_twice(fake: FakeOpenAiImages) -> None:
    fake.submit_delay_s = 5.0
    async with serve_on_loopback(fake.app) as base_url:
        adapter = OpenAiImagesAdapter.standalone(
            ProviderSettings(
                api_key=fake.api_key,
                base_url=base_url,
                timeout_seconds=0.3,
                retry_backoff_seconds=0.001,
            )
        )
        try:
            with pytest.raises(ProviderRetriableError, match="timed out"):
                await adapter.submit(image_request())
        finally:
            fake.delay.release()
            await adapter.aclose()
    assert (fake.post_attempts, fake.submissions) == (1, 1)


async def test_served_url_outputs_are_fetched_from_the_fakes_own_address(
    fake: FakeOpenAiImages,
) -> None:
    async with serve_on_loopback(fake.app) as base_url:
        # Compatible servers document their base URL with /v1; both forms work.
        adapter = OpenAiImagesAdapter.standalone(
            ProviderSettings(
                api_key=fake.api_key, base_url=f"{base_url}/v1/", retry_backoff_seconds=0.001
            )
        )
        try:
            request = image_request(upstream_model="dall-e-2", options={"response_format": "url"})
            result = await adapter.poll(await adapter.submit(request), request)
        finally:
            await adapter.aclose()
    assert [output.data for output in result.outputs] == fake.served
    assert fake.requests[-1][0] == "GET"
    assert fake.requests[-1][1].startswith("/files/")


async def test_a_wrong_api_key_is_fatal(fake: FakeOpenAiImages) -> None:
    adapter = make_adapter(fake, api_key="sk-wrong-key")
    try:
        with pytest.raises(ProviderFatalError, match="Incorrect API key"):
            await adapter.submit(image_request())
    finally:
        await adapter.aclose()


async def test_an_unknown_model_is_fatal(adapter: OpenAiImagesAdapter) -> None:
    with pytest.raises(ProviderFatalError, match="does not exist"):
        await adapter.submit(image_request(upstream_model="gpt-image-nope"))


async def test_missing_permissions_are_fatal(
    adapter: OpenAiImagesAdapter, fake: FakeOpenAiImages
) -> None:
    fake.fail_always(
        403,
        body={
            "error": {
                "message": "Your organization must be verified to use the model `gpt-image-1`.",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        },
    )

    with pytest.raises(ProviderFatalError, match="verified"):
        await adapter.submit(image_request())


async def test_misconfigured_routes_are_fatal(adapter: OpenAiImagesAdapter) -> None:
    with pytest.raises(ProviderFatalError, match="size_map"):
        await adapter.submit(image_request(options={"size_map": {"16:9": 1536}}))
    video = RenderRequest("gen-video", "sora", "video", "sora-2", {"prompt": "rain"})
    with pytest.raises(ProviderFatalError, match="video"):
        await adapter.submit(video)


async def test_cancel_is_a_no_op(adapter: OpenAiImagesAdapter, fake: FakeOpenAiImages) -> None:
    request = image_request()
    handle = await adapter.submit(request)
    seen = list(fake.requests)

    await adapter.cancel(handle)
    await adapter.cancel(persisted(handle))

    assert fake.requests == seen
