"""The fal adapter against a fake fal queue (tests/fakes/fal.py).

Nothing leaves this machine: the fake runs in-process through `httpx.ASGITransport`, or
under uvicorn on 127.0.0.1 where a real socket is needed (timeouts)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.fakes.fal import FakeFal
from vivix.providers.base import (
    Progress,
    ProviderAdapter,
    ProviderFatalError,
    ProviderRejectedError,
    ProviderRetriableError,
    RenderRequest,
    RenderResult,
    UpstreamHandle,
)
from vivix.providers.fal import FalAdapter
from vivix.providers.fal.adapter import progress_from_logs as fal_progress_from_logs
from vivix.settings import ProviderSettings

FAKE_HOST = "http://fal.test"
IMAGE_MODEL = "fal-ai/bytedance/seedream/v4/text-to-image"
VIDEO_MODEL = "fal-ai/wan/v2.7/text-to-video"


def fal_adapter(fake: FakeFal, **overrides: Any) -> FalAdapter:
    settings: dict[str, Any] = {
        "api_key": fake.api_key,
        "base_url": FAKE_HOST,
        "retry_backoff_seconds": 0.001,
    }
    settings.update(overrides)
    return FalAdapter.standalone(
        ProviderSettings(**settings), transport=httpx.ASGITransport(app=fake.app)
    )


def image_request(options: dict[str, Any] | None = None, **params: Any) -> RenderRequest:
    return RenderRequest(
        generation_id="gen_1",
        model="seedream-4",
        category="image",
        upstream_model=IMAGE_MODEL,
        params={"prompt": "a ceramic teapot", "number_results": 1, **params},
        options=options or {},
    )


def video_request(options: dict[str, Any] | None = None, **params: Any) -> RenderRequest:
    return RenderRequest(
        generation_id="gen_2",
        model="wan-2.7-text-to-video",
        category="video",
        upstream_model=VIDEO_MODEL,
        params={"prompt": "neon-lit Tokyo street", "duration": 5, **params},
        options=options or {},
    )


async def poll_until_done(
    adapter: FalAdapter, handle: UpstreamHandle, request: RenderRequest, max_polls: int = 20
) -> tuple[RenderResult, list[Progress]]:
    progress: list[Progress] = []
    for _ in range(max_polls):
        outcome = await adapter.poll(handle, request)
        if isinstance(outcome, RenderResult):
            return outcome, progress
        progress.append(outcome)
    raise AssertionError(f"no result after {max_polls} polls")


@pytest.fixture
def fake() -> FakeFal:
    return FakeFal(polls_before_done=2)


@pytest.fixture
async def adapter(fake: FakeFal) -> AsyncIterator[FalAdapter]:
    adapter = fal_adapter(fake)
    yield adapter
    await adapter.aclose()


def test_fal_adapter_implements_the_provider_protocol(fake: FakeFal) -> None:
    adapter = fal_adapter(fake)
    assert isinstance(adapter, ProviderAdapter)
    assert adapter.name == "fal"


async def test_image_job_with_three_results_delivers_the_served_files(
    fake: FakeFal, adapter: FalAdapter
) -> None:
    fake.outputs = 3
    request = image_request(number_results=3)

    handle = await adapter.submit(request)
    result, progress = await poll_until_done(adapter, handle, request)

    assert [p.status for p in progress] == ["queued", "processing"]
    assert len(result.outputs) == 3
    job = fake.jobs[handle["request_id"]]
    served = [fake.files[f"{job.request_id}-{i}.png"][0] for i in range(3)]
    assert [o.data for o in result.outputs] == served
    assert len(set(served)) == 3
    assert {o.content_type for o in result.outputs} == {"image/png"}
    assert {(o.width, o.height) for o in result.outputs} == {fake.image_size}
    assert fake.submissions == 1
    assert fake.poll_counts == {job.request_id: 3}


async def test_queue_position_while_queued_then_the_logs_tqdm_bar_while_running(
    fake: FakeFal, adapter: FalAdapter
) -> None:
    fake.queue_ahead = 2
    fake.polls_before_done = 6
    request = image_request()

    handle = await adapter.submit(request)
    result, progress = await poll_until_done(adapter, handle, request)

    assert result.outputs
    # fal counts from 0 (next); ours from 1. No fraction until the model logs a bar.
    assert [(p.status, p.queue_position, p.fraction) for p in progress] == [
        ("queued", 3, None),
        ("queued", 2, None),
        ("queued", 1, None),
        ("processing", None, 0.1),
        ("processing", None, 0.2),
        ("processing", None, 0.3),
    ]


def test_fal_log_progress_ignores_lines_without_a_bar_and_reads_the_newest() -> None:
    assert fal_progress_from_logs(None) is None
    assert fal_progress_from_logs([]) is None
    assert fal_progress_from_logs([{"message": "Loading weights"}, "junk", {"message": 5}]) is None
    redrawn = " 20%|##        | 2/10 [00:01<00:04]\r 70%|#######   | 7/10 [00:03<00:01]"
    logs = [{"message": redrawn}, {"message": "saving output"}]
    assert fal_progress_from_logs(logs) == 0.7


async def test_video_job_delivers_the_mp4_with_its_dimensions_and_duration(
    fake: FakeFal, adapter: FalAdapter
) -> None:
    fake.output_kind = "video"
    request = video_request()

    handle = await adapter.submit(request)
    result, _ = await poll_until_done(adapter, handle, request)

    (video,) = result.outputs
    assert video.data == fake.files[f"{handle['request_id']}.mp4"][0]
    assert video.content_type == "video/mp4"
    assert (video.width, video.height, video.duration_s) == (*fake.video_size, 1.0)


async def test_audio_job_delivers_the_mp3(fake: FakeFal, adapter: FalAdapter) -> None:
    fake.output_kind = "audio"
    request = RenderRequest(
        generation_id="gen_3",
        model="some-tts",
        category="audio",
        upstream_model="fal-ai/some-tts",
        params={"prompt": "a calm voice"},
    )

    handle = await adapter.submit(request)
    result, _ = await poll_until_done(adapter, handle, request)

    (audio,) = result.outputs
    assert audio.data == fake.files[f"{handle['request_id']}.mp3"][0]
    assert audio.content_type == "audio/mpeg"


async def test_handle_is_small_json_with_app_level_urls(fake: FakeFal, adapter: FalAdapter) -> None:
    handle = await adapter.submit(video_request())

    request_id = handle["request_id"]
    assert json.loads(json.dumps(handle)) == handle
    assert handle == {
        "request_id": request_id,
        "model": VIDEO_MODEL,
        # Status/result/cancel use the app id only, as fal documents.
        "status_url": f"{FAKE_HOST}/fal-ai/wan/requests/{request_id}/status",
        "response_url": f"{FAKE_HOST}/fal-ai/wan/requests/{request_id}",
        "cancel_url": f"{FAKE_HOST}/fal-ai/wan/requests/{request_id}/cancel",
    }


async def test_image_route_sends_mapped_params_as_the_fal_input(
    fake: FakeFal, adapter: FalAdapter
) -> None:
    request = image_request(
        options={
            "size": "image_size",
            "fields": {"negative_prompt": False},
            "input": {"enable_safety_checker": True},
        },
        negative_prompt="blurry",
        aspect_ratio="16:9",
        resolution="2K",
        number_results=2,
        seed=7,
        reference_images=["https://images.example/a.png", "https://images.example/b.png"],
        output_format="png",  # model-specific and not mapped: not sent
    )

    await adapter.submit(request)

    assert fake.received_models == [IMAGE_MODEL]
    assert fake.received == [
        {
            "prompt": "a ceramic teapot",
            "image_size": {"width": 2048, "height": 1152},
            "num_images": 2,
            "seed": 7,
            "image_urls": ["https://images.example/a.png", "https://images.example/b.png"],
            "enable_safety_checker": True,
        }
    ]


async def test_image_route_with_preset_sizes_sends_the_nearest_preset(
    fake: FakeFal, adapter: FalAdapter
) -> None:
    await adapter.submit(image_request(options={"size": "image_size_enum"}, aspect_ratio="9:16"))

    assert fake.received[0]["image_size"] == "portrait_16_9"
    assert "aspect_ratio" not in fake.received[0]


async def test_video_route_sends_mapped_params_as_the_fal_input(
    fake: FakeFal, adapter: FalAdapter
) -> None:
    request = video_request(
        options={"fields": {"audio": "enable_audio"}, "values": {"duration": {"5": "5"}}},
        aspect_ratio="16:9",
        resolution="1080p",
        audio=True,
        seed=3,
        reference_images=["https://images.example/first-frame.png"],
    )

    await adapter.submit(request)

    assert fake.received_models == [VIDEO_MODEL]
    assert fake.received == [
        {
            "prompt": "neon-lit Tokyo street",
            "image_url": "https://images.example/first-frame.png",
            "duration": "5",
            "aspect_ratio": "16:9",
            "resolution": "1080p",
            "enable_audio": True,
            "seed": 3,
        }
    ]


async def test_unknown_size_option_is_a_misconfigured_route(adapter: FalAdapter) -> None:
    with pytest.raises(ProviderFatalError, match="size"):
        await adapter.submit(image_request(options={"size": "huge"}))


async def test_model_validation_error_rejects_the_generation(
    fake: FakeFal, adapter: FalAdapter
) -> None:
    fake.failure = "validation"
    request = image_request()
    handle = await adapter.submit(request)

    with pytest.raises(ProviderRejectedError) as caught:
        await poll_until_done(adapter, handle, request)

    assert caught.value.content is False
    assert "image_size" in caught.value.message or "Input should be" in caught.value.message


async def test_content_policy_violation_is_a_content_rejection(
    fake: FakeFal, adapter: FalAdapter
) -> None:
    fake.failure = "content"
    request = image_request()
    handle = await adapter.submit(request)

    with pytest.raises(ProviderRejectedError) as caught:
        await poll_until_done(adapter, handle, request)

    assert caught.value.content is True


async def test_every_image_flagged_by_the_safety_checker_is_a_content_rejection(
    fake: FakeFal, adapter: FalAdapter
) -> None:
    fake.failure = "nsfw"
    fake.outputs = 2
    request = image_request(number_results=2)
    handle = await adapter.submit(request)

    with pytest.raises(ProviderRejectedError) as caught:
        await poll_until_done(adapter, handle, request)

    assert caught.value.content is True


async def test_runner_error_is_retriable_with_a_new_submission(
    fake: FakeFal, adapter: FalAdapter
) -> None:
    fake.failure = "internal"
    request = image_request()
    handle = await adapter.submit(request)

    with pytest.raises(ProviderRetriableError, match="runner") as caught:
        await poll_until_done(adapter, handle, request)

    # fal retried the runner itself and recorded the failure as the request's result:
    # asking again returns the same answer, so it is neither retried nor polled again.
    assert caught.value.resubmit is True
    assert fake.result_requests == 1


async def test_429_on_submit_waits_for_retry_after_and_submits_once(fake: FakeFal) -> None:
    # A backoff this long would blow the time limit: only Retry-After can make it pass.
    adapter = fal_adapter(fake, retry_backoff_seconds=5.0)
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


async def test_503_before_acceptance_is_retried_with_one_submission(
    fake: FakeFal, adapter: FalAdapter
) -> None:
    fake.inject("submit", 503, times=2)
    fake.inject("status", 500, times=2)
    request = image_request()

    handle = await adapter.submit(request)
    result, _ = await poll_until_done(adapter, handle, request)

    assert len(result.outputs) == 1
    assert fake.submit_attempts == 3
    assert fake.submissions == 1


async def test_persistent_503_on_submit_is_retriable(fake: FakeFal, adapter: FalAdapter) -> None:
    fake.inject("submit", 503, times=10)

    with pytest.raises(ProviderRetriableError, match="503"):
        await adapter.submit(image_request())

    assert fake.submit_attempts == 4  # the first try and three retries
    assert fake.submissions == 0


async def test_500_on_submit_is_not_retried_because_it_may_have_been_accepted(
    fake: FakeFal, adapter: FalAdapter
) -> None:
    fake.inject("submit", 500, times=10)

    with pytest.raises(ProviderRetriableError, match="500"):
        await adapter.submit(image_request())

    assert fake.submit_attempts == 1


async def test_persistent_5xx_on_status_is_retriable(fake: FakeFal, adapter: FalAdapter) -> None:
    request = image_request()
    handle = await adapter.submit(request)
    fake.inject("status", 502, times=10)

    with pytest.raises(ProviderRetriableError, match="502") as caught:
        await adapter.poll(handle, request)

    # We couldn't ask; the request itself is fine: poll the same one again.
    assert caught.value.resubmit is False
    assert fake.submissions == 1


async def test_request_the_queue_no_longer_knows_asks_for_a_new_submission(
    fake: FakeFal, adapter: FalAdapter
) -> None:
    request = image_request()
    handle = await adapter.submit(request)
    del fake.jobs[handle["request_id"]]  # past fal's retention: status answers 404

    with pytest.raises(ProviderRetriableError, match="no longer knows") as caught:
        await adapter.poll(handle, request)

    assert caught.value.resubmit is True


async def test_expired_result_asks_for_a_new_submission(fake: FakeFal, adapter: FalAdapter) -> None:
    fake.polls_before_done = 0
    request = image_request()
    handle = await adapter.submit(request)
    fake.inject("result", 404)

    with pytest.raises(ProviderRetriableError, match="404") as caught:
        await adapter.poll(handle, request)

    assert caught.value.resubmit is True


async def test_bare_5xx_on_result_is_retried_then_left_for_the_next_poll(
    fake: FakeFal, adapter: FalAdapter
) -> None:
    fake.polls_before_done = 0
    request = image_request()
    handle = await adapter.submit(request)
    fake.inject("result", 502, times=4)  # a proxy's answer: no fal error type

    with pytest.raises(ProviderRetriableError, match="502") as caught:
        await adapter.poll(handle, request)
    assert caught.value.resubmit is False
    assert fake.result_requests == 4  # the first try and three retries

    result = await adapter.poll(handle, request)  # the same request delivers later
    assert isinstance(result, RenderResult)
    assert fake.submissions == 1


async def test_output_file_gone_from_the_cdn_asks_for_a_new_submission(
    fake: FakeFal, adapter: FalAdapter
) -> None:
    fake.polls_before_done = 0
    request = image_request()
    handle = await adapter.submit(request)
    fake.inject("files", 404)

    with pytest.raises(ProviderRetriableError, match="404") as caught:
        await adapter.poll(handle, request)

    assert caught.value.resubmit is True


async def test_unreachable_output_file_is_downloaded_on_the_next_poll(
    fake: FakeFal, adapter: FalAdapter
) -> None:
    fake.polls_before_done = 0
    request = image_request()
    handle = await adapter.submit(request)
    fake.inject("files", 503, times=4)

    with pytest.raises(ProviderRetriableError, match="503") as caught:
        await adapter.poll(handle, request)
    assert caught.value.resubmit is False

    assert isinstance(await adapter.poll(handle, request), RenderResult)
    assert fake.submissions == 1


async def test_submit_read_timeout_is_retriable_and_never_submits_twice(fake: FakeFal) -> None:
    fake.submit_delay_s = 0.5  # fal accepts the job but answers after our timeout
    async with fake.serve() as base_url:
        adapter = FalAdapter.standalone(
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


async def test_job_runs_end_to_end_against_the_fake_on_a_real_socket(fake: FakeFal) -> None:
    fake.outputs = 2
    request = image_request(number_results=2)
    async with fake.serve() as base_url:
        adapter = FalAdapter.standalone(
            ProviderSettings(api_key=fake.api_key, base_url=base_url, retry_backoff_seconds=0.001)
        )
        handle = await adapter.submit(request)
        result, _ = await poll_until_done(adapter, handle, request)
        await adapter.aclose()

    assert handle["status_url"].startswith(f"{base_url}/fal-ai/bytedance/requests/")
    assert len(result.outputs) == 2


async def test_cancel_stops_a_running_job(fake: FakeFal, adapter: FalAdapter) -> None:
    fake.polls_before_done = 10
    request = video_request()
    handle = await adapter.submit(request)
    assert isinstance(await adapter.poll(handle, request), Progress)

    await adapter.cancel(handle)

    assert fake.jobs[handle["request_id"]].canceled
    with pytest.raises(ProviderRejectedError, match="canceled upstream") as caught:
        await poll_until_done(adapter, handle, request)
    assert caught.value.content is False


async def test_cancel_of_a_finished_or_unknown_job_does_not_raise(
    fake: FakeFal, adapter: FalAdapter
) -> None:
    request = image_request()
    handle = await adapter.submit(request)
    await poll_until_done(adapter, handle, request)

    await adapter.cancel(handle)  # fal answers 400 ALREADY_COMPLETED
    await adapter.cancel({**handle, "request_id": "nope", "cancel_url": None})  # 404 NOT_FOUND

    assert fake.cancels == 2
    assert not fake.jobs[handle["request_id"]].canceled


async def test_resume_after_a_crash_polls_the_same_job_with_a_new_adapter(fake: FakeFal) -> None:
    request = video_request()
    fake.output_kind = "video"
    first = fal_adapter(fake)
    stored = json.dumps(await first.submit(request))
    await first.aclose()  # the worker process dies here

    second = fal_adapter(fake)
    result, _ = await poll_until_done(second, json.loads(stored), request)
    await second.aclose()

    assert len(result.outputs) == 1
    assert fake.submissions == 1


async def test_stored_urls_on_another_host_are_sent_to_the_configured_queue_host(
    fake: FakeFal, adapter: FalAdapter
) -> None:
    request = image_request()
    handle = await adapter.submit(request)
    public = {
        key: value.replace(FAKE_HOST, "https://queue.fal.run")
        for key, value in handle.items()
        if key.endswith("_url")
    }

    result, _ = await poll_until_done(adapter, {**handle, **public}, request)

    assert len(result.outputs) == 1


async def test_job_that_never_finishes_keeps_reporting_progress(
    fake: FakeFal, adapter: FalAdapter
) -> None:
    fake.polls_before_done = 10**9
    request = video_request()
    handle = await adapter.submit(request)

    outcomes = [await adapter.poll(handle, request) for _ in range(5)]

    assert all(isinstance(outcome, Progress) for outcome in outcomes)
    assert fake.poll_counts[handle["request_id"]] == 5


async def test_wrong_api_key_is_fatal(fake: FakeFal) -> None:
    adapter = fal_adapter(fake, api_key="wrong-key")

    with pytest.raises(ProviderFatalError, match="401"):
        await adapter.submit(image_request())
    await adapter.aclose()

    assert fake.submissions == 0


async def test_unknown_model_is_fatal(fake: FakeFal, adapter: FalAdapter) -> None:
    fake.known_models = {VIDEO_MODEL}

    with pytest.raises(ProviderFatalError, match="does not know model"):
        await adapter.submit(image_request())
