"""The Runware adapter against a fake Runware REST API (tests/fakes/runware.py).

Nothing leaves this machine: the fake runs in-process through `httpx.ASGITransport`, or
under uvicorn on 127.0.0.1 where a real socket is needed (timeouts)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.fakes.runware import FakeRunware
from vivix.providers.base import (
    Progress,
    ProviderAdapter,
    ProviderFatalError,
    ProviderRejectedError,
    ProviderRetriableError,
    ReferenceImage,
    RenderRequest,
    RenderResult,
    UpstreamHandle,
)
from vivix.providers.runware import RunwareAdapter
from vivix.providers.runware.adapter import api_root, pixel_size
from vivix.settings import ProviderSettings

FAKE_HOST = "http://runware.test"
FLUX_DEV = "runware:101@1"


def runware_adapter(fake: FakeRunware, **overrides: Any) -> RunwareAdapter:
    settings: dict[str, Any] = {
        "api_key": fake.api_key,
        "base_url": FAKE_HOST,
        "retry_backoff_seconds": 0.001,
    }
    settings.update(overrides)
    return RunwareAdapter.standalone(
        ProviderSettings(**settings), transport=httpx.ASGITransport(app=fake.app)
    )


def image_request(options: dict[str, Any] | None = None, **params: Any) -> RenderRequest:
    return RenderRequest(
        generation_id="gen_1",
        model="flux-dev",
        category="image",
        upstream_model=FLUX_DEV,
        params={"prompt": "a ceramic teapot", "number_results": 1, **params},
        options=options or {},
    )


async def poll_until_done(
    adapter: RunwareAdapter, handle: UpstreamHandle, request: RenderRequest, max_polls: int = 20
) -> tuple[RenderResult, list[Progress]]:
    progress: list[Progress] = []
    for _ in range(max_polls):
        outcome = await adapter.poll(handle, request)
        if isinstance(outcome, RenderResult):
            return outcome, progress
        progress.append(outcome)
    raise AssertionError(f"no result after {max_polls} polls")


@pytest.fixture
def fake() -> FakeRunware:
    return FakeRunware(polls_before_done=2)


@pytest.fixture
async def adapter(fake: FakeRunware) -> AsyncIterator[RunwareAdapter]:
    adapter = runware_adapter(fake)
    yield adapter
    await adapter.aclose()


def test_runware_adapter_implements_the_provider_protocol(fake: FakeRunware) -> None:
    adapter = runware_adapter(fake)
    assert isinstance(adapter, ProviderAdapter)
    assert adapter.name == "runware"
    assert RunwareAdapter.default_base_url == "https://api.runware.ai"


async def test_three_images_are_polled_with_get_response_and_downloaded(
    fake: FakeRunware, adapter: RunwareAdapter
) -> None:
    request = image_request(number_results=3)

    handle = await adapter.submit(request)
    result, progress = await poll_until_done(adapter, handle, request)

    assert [p.status for p in progress] == ["processing", "processing"]
    task = fake.tasks[handle["task_uuid"]]
    served = [fake.files[item["imageURL"].rsplit("/", 1)[1]][0] for item in task.items]
    assert [o.data for o in result.outputs] == served
    assert len(set(served)) == 3
    assert {o.content_type for o in result.outputs} == {"image/png"}
    assert {(o.width, o.height) for o in result.outputs} == {fake.image_size}
    assert fake.submissions == 1
    assert fake.poll_counts == {handle["task_uuid"]: 3}
    assert fake.auth_modes == ["header"] * 4  # Bearer header, never the key in a body


async def test_handle_is_the_client_generated_task_uuid_and_survives_json(
    fake: FakeRunware, adapter: RunwareAdapter
) -> None:
    handle = await adapter.submit(image_request(number_results=2))

    assert json.loads(json.dumps(handle)) == handle
    assert handle == {
        "task_uuid": fake.received[0]["taskUUID"],
        "task_type": "imageInference",
        "number_results": 2,
    }


async def test_image_route_sends_the_documented_task_fields(
    fake: FakeRunware, adapter: RunwareAdapter
) -> None:
    request = image_request(
        options={"input": {"steps": 28, "CFGScale": 3.5, "outputFormat": "PNG"}},
        negative_prompt="blurry",
        aspect_ratio="16:9",
        resolution="1K",
        number_results=2,
        seed=7,
        reference_images=["https://images.example/a.png"],
    )

    handle = await adapter.submit(request)

    assert fake.received == [
        {
            "taskType": "imageInference",
            "taskUUID": handle["task_uuid"],
            "deliveryMethod": "async",
            "model": FLUX_DEV,
            "positivePrompt": "a ceramic teapot",
            "width": 1024,
            "height": 576,
            "outputType": "URL",
            "includeCost": True,
            "negativePrompt": "blurry",
            "numberResults": 2,
            "seed": 7,
            "referenceImages": ["https://images.example/a.png"],
            "steps": 28,
            "CFGScale": 3.5,
            "outputFormat": "PNG",
        }
    ]


async def test_portrait_sizes_are_rounded_to_the_required_multiple_of_64(
    fake: FakeRunware, adapter: RunwareAdapter
) -> None:
    await adapter.submit(image_request(aspect_ratio="4:5"))
    await adapter.submit(image_request(aspect_ratio="9:16"))

    assert [(t["width"], t["height"]) for t in fake.received] == [(832, 1024), (576, 1024)]


async def test_sizes_option_pins_dimensions_per_aspect_ratio_and_resolution(
    fake: FakeRunware, adapter: RunwareAdapter
) -> None:
    options = {"sizes": {"16:9@2K": "1792x1024", "16:9": [1344, 768]}}

    await adapter.submit(image_request(options, aspect_ratio="16:9", resolution="2K"))
    await adapter.submit(image_request(options, aspect_ratio="16:9", resolution="1K"))

    assert [(t["width"], t["height"]) for t in fake.received] == [(1792, 1024), (1344, 768)]


async def test_seed_zero_maps_past_our_range_because_runware_seeds_start_at_1(
    fake: FakeRunware, adapter: RunwareAdapter
) -> None:
    await adapter.submit(image_request(seed=0))

    assert fake.received[0]["seed"] == 2**32


async def test_seed_image_mode_inlines_the_fetched_reference_as_a_data_uri(
    fake: FakeRunware, adapter: RunwareAdapter
) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"0" * 16
    request = image_request(
        {"reference_images": "seedImage", "reference_images_as": "data_uri"},
        reference_images=["https://images.example/a.png"],
    )
    request.reference_images = [ReferenceImage("https://images.example/a.png", png)]

    await adapter.submit(request)

    task = fake.received[0]
    assert task["seedImage"] == f"data:image/png;base64,{base64.b64encode(png).decode()}"
    assert "referenceImages" not in task


async def test_video_route_uses_video_inference_with_the_first_frame(
    fake: FakeRunware, adapter: RunwareAdapter
) -> None:
    request = RenderRequest(
        generation_id="gen_2",
        model="some-video",
        category="video",
        upstream_model="klingai:5@3",
        params={
            "prompt": "neon-lit street",
            "duration": 5,
            "aspect_ratio": "16:9",
            "resolution": "720p",
        },
        reference_images=[ReferenceImage("https://images.example/first.png")],
    )

    handle = await adapter.submit(request)
    result, _ = await poll_until_done(adapter, handle, request)

    task = fake.received[0]
    assert (task["taskType"], task["width"], task["height"], task["duration"]) == (
        "videoInference",
        1280,
        720,
        5,
    )
    assert task["frameImages"] == [
        {"inputImage": "https://images.example/first.png", "frame": "first"}
    ]
    assert "numberResults" not in task
    (video,) = result.outputs
    assert video.content_type == "video/mp4"
    assert (video.width, video.height) == fake.video_size
    assert video.duration_s == pytest.approx(1.0, abs=0.2)


async def test_base64_output_type_is_decoded_from_get_response(
    fake: FakeRunware, adapter: RunwareAdapter
) -> None:
    request = image_request({"input": {"outputType": "base64Data"}}, number_results=2)

    handle = await adapter.submit(request)
    result, _ = await poll_until_done(adapter, handle, request)

    expected = [
        base64.b64decode(item["imageBase64Data"]) for item in fake.tasks[handle["task_uuid"]].items
    ]
    assert [o.data for o in result.outputs] == expected
    assert {o.content_type for o in result.outputs} == {"image/png"}


async def test_staggered_results_report_partial_progress(
    fake: FakeRunware, adapter: RunwareAdapter
) -> None:
    fake.stagger = True
    fake.polls_before_done = 1
    request = image_request(number_results=4)

    handle = await adapter.submit(request)
    result, progress = await poll_until_done(adapter, handle, request)

    assert [p.fraction for p in progress] == [None, 0.25, 0.5, 0.75]
    assert len(result.outputs) == 4


async def test_invalid_dimensions_are_rejected_as_provider_errors(
    fake: FakeRunware, adapter: RunwareAdapter
) -> None:
    # 4K asks for 4096 px; the classic models stop at 2048 and Runware refuses the task.
    with pytest.raises(ProviderRejectedError, match="invalidWidth") as caught:
        await adapter.submit(image_request(resolution="4K"))

    assert caught.value.content is False
    assert fake.submissions == 0


async def test_a_task_that_fails_validation_upstream_is_a_provider_error(
    fake: FakeRunware, adapter: RunwareAdapter
) -> None:
    fake.failure = "validation"
    request = image_request()
    handle = await adapter.submit(request)

    with pytest.raises(ProviderRejectedError, match="invalidSeedImage") as caught:
        await poll_until_done(adapter, handle, request)

    assert caught.value.content is False


async def test_provider_timeout_ends_the_task_and_asks_for_a_new_submission(
    fake: FakeRunware, adapter: RunwareAdapter
) -> None:
    fake.failure = "provider"
    request = image_request()
    handle = await adapter.submit(request)

    with pytest.raises(ProviderRetriableError, match="timeoutProvider") as caught:
        await poll_until_done(adapter, handle, request)

    assert caught.value.resubmit is True


async def test_content_moderation_is_a_content_rejection(
    fake: FakeRunware, adapter: RunwareAdapter
) -> None:
    fake.failure = "content"
    request = image_request()
    handle = await adapter.submit(request)

    with pytest.raises(ProviderRejectedError) as caught:
        await poll_until_done(adapter, handle, request)

    assert caught.value.content is True


async def test_every_output_flagged_nsfw_is_a_content_rejection(
    fake: FakeRunware, adapter: RunwareAdapter
) -> None:
    fake.failure = "nsfw"
    request = image_request({"input": {"safety": {"checkContent": True}}}, number_results=2)
    handle = await adapter.submit(request)

    with pytest.raises(ProviderRejectedError, match="safety") as caught:
        await poll_until_done(adapter, handle, request)

    assert caught.value.content is True


async def test_429_on_submit_waits_for_retry_after_and_submits_once(fake: FakeRunware) -> None:
    # A backoff this long would blow the time limit: only Retry-After can make it pass.
    adapter = runware_adapter(fake, retry_backoff_seconds=5.0)
    delays: list[float] = []
    compute_delay = adapter._http._delay

    def recording_delay(attempt: int, retry_after: float | None) -> float:
        delays.append(compute_delay(attempt, retry_after))
        return delays[-1]

    adapter._http._delay = recording_delay  # type: ignore[method-assign]
    fake.inject("submit", 429, times=2, retry_after="0.02")
    request = image_request()

    async with asyncio.timeout(2):
        handle = await adapter.submit(request)
        await poll_until_done(adapter, handle, request)
    await adapter.aclose()

    assert delays == [0.02, 0.02]
    assert fake.submit_attempts == 3
    assert fake.submissions == 1


async def test_5xx_before_success_still_renders_with_one_submission(
    fake: FakeRunware, adapter: RunwareAdapter
) -> None:
    fake.inject("submit", 503, times=2)
    fake.inject("poll", 500, times=2)
    fake.inject("files", 502, times=1)
    request = image_request()

    handle = await adapter.submit(request)
    result, _ = await poll_until_done(adapter, handle, request)

    assert len(result.outputs) == 1
    assert fake.submit_attempts == 3
    assert fake.submissions == 1


async def test_persistent_5xx_on_get_response_keeps_the_same_task(
    fake: FakeRunware, adapter: RunwareAdapter
) -> None:
    request = image_request()
    handle = await adapter.submit(request)
    fake.inject("poll", 502, times=10)

    with pytest.raises(ProviderRetriableError, match="502") as caught:
        await adapter.poll(handle, request)

    assert caught.value.resubmit is False


async def test_persistent_503_on_submit_is_retriable(
    fake: FakeRunware, adapter: RunwareAdapter
) -> None:
    fake.inject("submit", 503, times=10)

    with pytest.raises(ProviderRetriableError, match="503"):
        await adapter.submit(image_request())

    assert fake.submit_attempts == 4  # the first try and three retries
    assert fake.submissions == 0


async def test_500_on_submit_is_not_retried_because_it_may_have_been_accepted(
    fake: FakeRunware, adapter: RunwareAdapter
) -> None:
    fake.inject("submit", 500, times=10)

    with pytest.raises(ProviderRetriableError, match="500"):
        await adapter.submit(image_request())

    assert fake.submit_attempts == 1


async def test_submit_read_timeout_is_retriable_and_never_submits_twice(fake: FakeRunware) -> None:
    fake.submit_delay_s = 0.5  # Runware accepts the task but answers after our timeout
    async with fake.serve() as base_url:
        adapter = RunwareAdapter.standalone(
            ProviderSettings(
                api_key=fake.api_key,
                base_url=base_url,
                retry_backoff_seconds=0.001,
                timeout_seconds=0.1,
            )
        )
        with pytest.raises(ProviderRetriableError, match="timed out"):
            await adapter.submit(image_request())
        await adapter.aclose()

    assert fake.submit_attempts == 1
    assert fake.submissions == 1


async def test_cancel_is_a_no_op_because_runware_has_no_cancel(
    fake: FakeRunware, adapter: RunwareAdapter
) -> None:
    fake.polls_before_done = 10**9
    request = image_request()
    handle = await adapter.submit(request)

    await adapter.cancel(handle)
    await adapter.cancel({})

    assert isinstance(await adapter.poll(handle, request), Progress)  # still running upstream
    assert fake.submit_attempts == 1


async def test_resume_after_a_crash_polls_the_same_task_with_a_new_adapter(
    fake: FakeRunware,
) -> None:
    request = image_request(number_results=2)
    first = runware_adapter(fake)
    stored = json.dumps(await first.submit(request))
    await first.aclose()  # the worker process dies here

    second = runware_adapter(fake)
    result, _ = await poll_until_done(second, json.loads(stored), request)
    await second.aclose()

    assert len(result.outputs) == 2
    assert fake.submissions == 1


async def test_a_task_runware_forgot_asks_for_a_new_submission(
    fake: FakeRunware, adapter: RunwareAdapter
) -> None:
    request = image_request()
    handle = await adapter.submit(request)
    fake.forget()

    with pytest.raises(ProviderRetriableError, match="taskNotFound") as caught:
        await adapter.poll(handle, request)

    assert caught.value.resubmit is True


async def test_a_task_that_never_finishes_keeps_reporting_progress(
    fake: FakeRunware, adapter: RunwareAdapter
) -> None:
    fake.polls_before_done = 10**9
    request = image_request()
    handle = await adapter.submit(request)

    outcomes = [await adapter.poll(handle, request) for _ in range(5)]

    assert all(isinstance(outcome, Progress) for outcome in outcomes)
    assert fake.poll_counts[handle["task_uuid"]] == 5


async def test_wrong_api_key_is_fatal(fake: FakeRunware) -> None:
    adapter = runware_adapter(fake, api_key="wrong-key")

    with pytest.raises(ProviderFatalError, match="invalidApiKey"):
        await adapter.submit(image_request())
    await adapter.aclose()

    assert fake.submissions == 0


async def test_unknown_model_is_fatal(fake: FakeRunware, adapter: RunwareAdapter) -> None:
    fake.known_models = {"runware:100@1"}

    with pytest.raises(ProviderFatalError, match="modelNotFound"):
        await adapter.submit(image_request())


@pytest.mark.parametrize(
    "options",
    [
        {"input": {"taskUUID": "mine"}},
        {"input": "steps=4"},
        {"size_multiple": 0},
        {"sizes": {"1:1": "big"}},
        {"reference_images": "everywhere"},
        {"reference_images_as": "carrier-pigeon"},
    ],
)
async def test_bad_route_options_are_a_misconfigured_route(
    fake: FakeRunware, adapter: RunwareAdapter, options: dict[str, Any]
) -> None:
    with pytest.raises(ProviderFatalError, match="runware route option"):
        await adapter.submit(image_request(options))

    assert fake.submit_attempts == 0


async def test_audio_is_not_a_runware_category(adapter: RunwareAdapter) -> None:
    request = RenderRequest("gen_3", "tts", "audio", "some:1@1", {"prompt": "hello"})

    with pytest.raises(ProviderFatalError, match="audio"):
        await adapter.submit(request)


def test_base_url_is_accepted_with_or_without_the_v1_suffix() -> None:
    assert api_root("https://api.runware.ai/v1/") == "https://api.runware.ai"
    assert api_root("https://proxy.example/runware") == "https://proxy.example/runware"


def test_pixel_sizes_follow_our_resolution_rules() -> None:
    assert pixel_size("image", "1:1", "2K", 64) == (2048, 2048)
    assert pixel_size("image", "4:5", "1K", 8) == (816, 1024)
    assert pixel_size("video", "9:16", "1080p", 16) == (1088, 1920)
