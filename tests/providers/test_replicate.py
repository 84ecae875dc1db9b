"""The Replicate adapter against a fake Replicate API (tests/fakes/replicate.py).

Nothing leaves this machine: the fake runs in-process through `httpx.ASGITransport`, or
under uvicorn on 127.0.0.1 where a real socket is needed (timeouts)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.fakes.replicate import FakeReplicate
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
from vivix.providers.replicate import ReplicateAdapter
from vivix.providers.replicate.adapter import progress_from_logs
from vivix.settings import ProviderSettings

FAKE_HOST = "http://replicate.test"
IMAGE_MODEL = "bytedance/seedream-4"
VIDEO_MODEL = "wan-video/wan-2.7-t2v"
VERSION = "5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa"


def replicate_adapter(fake: FakeReplicate, **overrides: Any) -> ReplicateAdapter:
    settings: dict[str, Any] = {
        "api_key": fake.api_token,
        "base_url": FAKE_HOST,
        "retry_backoff_seconds": 0.001,
    }
    settings.update(overrides)
    return ReplicateAdapter.standalone(
        ProviderSettings(**settings), transport=httpx.ASGITransport(app=fake.app)
    )


def image_request(
    options: dict[str, Any] | None = None, model: str = IMAGE_MODEL, **params: Any
) -> RenderRequest:
    return RenderRequest(
        generation_id="gen_1",
        model="seedream-4",
        category="image",
        upstream_model=model,
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
    adapter: ReplicateAdapter, handle: UpstreamHandle, request: RenderRequest, max_polls: int = 20
) -> tuple[RenderResult, list[Progress]]:
    progress: list[Progress] = []
    for _ in range(max_polls):
        outcome = await adapter.poll(handle, request)
        if isinstance(outcome, RenderResult):
            return outcome, progress
        progress.append(outcome)
    raise AssertionError(f"no result after {max_polls} polls")


@pytest.fixture
def fake() -> FakeReplicate:
    return FakeReplicate(polls_before_done=2)


@pytest.fixture
async def adapter(fake: FakeReplicate) -> AsyncIterator[ReplicateAdapter]:
    adapter = replicate_adapter(fake)
    yield adapter
    await adapter.aclose()


def test_replicate_adapter_implements_the_provider_protocol(fake: FakeReplicate) -> None:
    adapter = replicate_adapter(fake)
    assert isinstance(adapter, ProviderAdapter)
    assert adapter.name == "replicate"


async def test_image_prediction_with_three_outputs_delivers_the_served_files(
    fake: FakeReplicate, adapter: ReplicateAdapter
) -> None:
    fake.outputs = 3
    request = image_request(number_results=3)

    handle = await adapter.submit(request)
    result, progress = await poll_until_done(adapter, handle, request)

    prediction_id = handle["prediction_id"]
    served = [fake.files[f"{prediction_id}-out-{i}.png"][0] for i in range(3)]
    assert [o.data for o in result.outputs] == served
    assert len(set(served)) == 3
    assert {o.content_type for o in result.outputs} == {"image/png"}
    # Replicate's output is bare URLs: dimensions are left for the worker to probe.
    assert {(o.width, o.height) for o in result.outputs} == {(None, None)}
    assert [p.status for p in progress] == ["starting", "processing"]
    assert [p.fraction for p in progress] == [0.5, 1.0]
    assert fake.submissions == 1
    assert fake.received_paths == [f"/v1/models/{IMAGE_MODEL}/predictions"]


async def test_video_prediction_delivers_the_mp4(
    fake: FakeReplicate, adapter: ReplicateAdapter
) -> None:
    fake.output_kind = "video"
    request = video_request()

    handle = await adapter.submit(request)
    result, _ = await poll_until_done(adapter, handle, request)

    (video,) = result.outputs
    assert video.data == fake.files[f"{handle['prediction_id']}-output.mp4"][0]
    assert video.content_type == "video/mp4"


async def test_pinned_version_is_created_through_the_predictions_endpoint(
    fake: FakeReplicate, adapter: ReplicateAdapter
) -> None:
    await adapter.submit(image_request(model=f"someone/some-model:{VERSION}"))

    assert fake.received_paths == ["/v1/predictions"]
    assert fake.received[0]["version"] == VERSION


async def test_handle_is_small_json_with_the_prediction_urls(
    fake: FakeReplicate, adapter: ReplicateAdapter
) -> None:
    handle = await adapter.submit(image_request())

    prediction_id = handle["prediction_id"]
    assert json.loads(json.dumps(handle)) == handle
    assert handle == {
        "prediction_id": prediction_id,
        "get_url": f"{FAKE_HOST}/v1/predictions/{prediction_id}",
        "cancel_url": f"{FAKE_HOST}/v1/predictions/{prediction_id}/cancel",
    }
    assert fake.prefer_headers == [None]  # async mode unless configured


async def test_sync_mode_answer_that_is_already_done_needs_no_poll_request(
    fake: FakeReplicate,
) -> None:
    fake.polls_before_done = 0
    adapter = replicate_adapter(fake, prefer_wait_seconds=5)
    request = image_request()

    handle = await adapter.submit(request)
    outcome = await adapter.poll(handle, request)
    await adapter.aclose()

    assert fake.prefer_headers == ["wait=5"]
    assert isinstance(outcome, RenderResult)
    assert len(outcome.outputs) == 1
    assert fake.poll_counts == {handle["prediction_id"]: 0}
    # What the worker persists (everything but `result`) still resumes the prediction.
    persisted = {k: v for k, v in handle.items() if k != "result"}
    assert set(persisted) == {"prediction_id", "get_url", "cancel_url"}


async def test_a_routes_prefer_wait_option_holds_the_create_until_the_prediction_is_done(
    fake: FakeReplicate, adapter: ReplicateAdapter
) -> None:
    fake.polls_before_done = 0
    fake.outputs = 2
    request = image_request({"prefer_wait": 30}, number_results=2)

    handle = await adapter.submit(request)
    outcome = await adapter.poll(handle, request)

    assert fake.prefer_headers == ["wait=30"]
    assert isinstance(outcome, RenderResult)
    assert len(outcome.outputs) == 2
    assert fake.poll_counts == {handle["prediction_id"]: 0}, "no GET was needed"


async def test_a_held_create_that_is_still_running_is_polled_as_usual(
    fake: FakeReplicate, adapter: ReplicateAdapter
) -> None:
    # Replicate answers a wait that ran out with the prediction still processing.
    request = image_request({"prefer_wait": 1})

    handle = await adapter.submit(request)
    result, progress = await poll_until_done(adapter, handle, request)

    assert fake.prefer_headers == ["wait=1"]
    assert "result" not in handle
    assert progress
    assert len(result.outputs) == 1
    assert fake.submissions == 1


async def test_prefer_wait_zero_on_a_route_turns_the_adapters_default_off(
    fake: FakeReplicate,
) -> None:
    adapter = replicate_adapter(fake, prefer_wait_seconds=10)
    await adapter.submit(image_request({"prefer_wait": 0}))
    await adapter.aclose()

    assert fake.prefer_headers == [None]


@pytest.mark.parametrize("value", [61, -1, "10", True, 2.5])
async def test_a_bad_prefer_wait_option_is_a_misconfigured_route(
    fake: FakeReplicate, adapter: ReplicateAdapter, value: object
) -> None:
    with pytest.raises(ProviderFatalError, match="prefer_wait"):
        await adapter.submit(image_request({"prefer_wait": value}))
    assert fake.submit_attempts == 0


async def test_image_route_sends_mapped_params_as_the_replicate_input(
    fake: FakeReplicate, adapter: ReplicateAdapter
) -> None:
    request = image_request(
        options={
            "fields": {"resolution": "size", "number_results": "max_images"},
            "input": {"sequential_image_generation": "auto"},
        },
        negative_prompt="blurry",  # default field name, sent as is
        aspect_ratio="4:5",
        resolution="2K",
        number_results=2,
        seed=11,
        reference_images=["https://images.example/a.png"],
        output_format="png",  # model-specific and not mapped: not sent
    )

    await adapter.submit(request)

    assert fake.received == [
        {
            "input": {
                "prompt": "a ceramic teapot",
                "negative_prompt": "blurry",
                "aspect_ratio": "4:5",
                "size": "2K",
                "max_images": 2,
                "seed": 11,
                "image_input": ["https://images.example/a.png"],
                "sequential_image_generation": "auto",
            }
        }
    ]


async def test_video_route_sends_mapped_params_as_the_replicate_input(
    fake: FakeReplicate, adapter: ReplicateAdapter
) -> None:
    request = video_request(
        options={"size": "width_height", "fields": {"audio": False}},
        aspect_ratio="9:16",
        resolution="720p",
        audio=True,
        seed=5,
    )

    await adapter.submit(request)

    assert fake.received_paths == [f"/v1/models/{VIDEO_MODEL}/predictions"]
    assert fake.received == [
        {
            "input": {
                "prompt": "neon-lit Tokyo street",
                "width": 720,
                "height": 1280,
                "duration": 5,
                "seed": 5,
            }
        }
    ]


async def test_malformed_model_id_is_a_misconfigured_route(adapter: ReplicateAdapter) -> None:
    with pytest.raises(ProviderFatalError, match="owner/name"):
        await adapter.submit(image_request(model="just-a-name"))


async def test_failed_prediction_with_an_input_problem_rejects_the_generation(
    fake: FakeReplicate, adapter: ReplicateAdapter
) -> None:
    fake.failure = "input"
    request = image_request()
    handle = await adapter.submit(request)

    with pytest.raises(ProviderRejectedError, match="could not be downloaded") as caught:
        await poll_until_done(adapter, handle, request)

    assert caught.value.content is False


async def test_input_validation_error_on_create_rejects_the_generation(
    fake: FakeReplicate, adapter: ReplicateAdapter
) -> None:
    fake.failure = "invalid_on_create"

    with pytest.raises(ProviderRejectedError, match="422") as caught:
        await adapter.submit(image_request())

    assert caught.value.content is False
    assert fake.submissions == 0


async def test_prediction_flagged_as_sensitive_is_a_content_rejection(
    fake: FakeReplicate, adapter: ReplicateAdapter
) -> None:
    fake.failure = "content"
    request = image_request()
    handle = await adapter.submit(request)

    with pytest.raises(ProviderRejectedError) as caught:
        await poll_until_done(adapter, handle, request)

    assert caught.value.content is True


async def test_prediction_failing_for_an_unknown_reason_is_retriable(
    fake: FakeReplicate, adapter: ReplicateAdapter
) -> None:
    fake.failure = "internal"
    request = image_request()
    handle = await adapter.submit(request)

    with pytest.raises(ProviderRetriableError, match="E1000") as caught:
        await poll_until_done(adapter, handle, request)

    # The prediction is over; polling it again returns the same failure.
    assert caught.value.resubmit is True


async def test_429_on_create_waits_for_retry_after_and_creates_once(fake: FakeReplicate) -> None:
    # A backoff this long would blow the time limit: only Retry-After can make it pass.
    adapter = replicate_adapter(fake, retry_backoff_seconds=5.0)
    delays: list[float] = []
    compute_delay = adapter._http._delay

    def recording_delay(attempt: int, retry_after: float | None) -> float:
        delays.append(compute_delay(attempt, retry_after))
        return delays[-1]

    adapter._http._delay = recording_delay  # type: ignore[method-assign]
    fake.inject("create", 429, times=2, retry_after="0.02")
    request = image_request()

    async with asyncio.timeout(2):
        handle = await adapter.submit(request)
        await poll_until_done(adapter, handle, request)
    await adapter.aclose()

    assert delays == [0.02, 0.02]
    assert fake.submit_attempts == 3
    assert fake.submissions == 1


async def test_503_before_acceptance_is_retried_with_one_prediction(
    fake: FakeReplicate, adapter: ReplicateAdapter
) -> None:
    fake.inject("create", 503, times=2)
    fake.inject("get", 500, times=2)
    request = image_request()

    handle = await adapter.submit(request)
    result, _ = await poll_until_done(adapter, handle, request)

    assert len(result.outputs) == 1
    assert fake.submit_attempts == 3
    assert fake.submissions == 1


async def test_persistent_503_on_create_is_retriable(
    fake: FakeReplicate, adapter: ReplicateAdapter
) -> None:
    fake.inject("create", 503, times=10)

    with pytest.raises(ProviderRetriableError, match="503"):
        await adapter.submit(image_request())

    assert fake.submit_attempts == 4  # the first try and three retries
    assert fake.submissions == 0


async def test_500_on_create_is_not_retried_because_it_may_have_been_accepted(
    fake: FakeReplicate, adapter: ReplicateAdapter
) -> None:
    fake.inject("create", 500, times=10)

    with pytest.raises(ProviderRetriableError, match="500"):
        await adapter.submit(image_request())

    assert fake.submit_attempts == 1


async def test_persistent_5xx_on_get_is_retriable(
    fake: FakeReplicate, adapter: ReplicateAdapter
) -> None:
    request = image_request()
    handle = await adapter.submit(request)
    fake.inject("get", 502, times=10)

    with pytest.raises(ProviderRetriableError, match="502") as caught:
        await adapter.poll(handle, request)

    # We couldn't ask; the prediction itself is fine: poll the same one again.
    assert caught.value.resubmit is False


async def test_prediction_replicate_no_longer_knows_asks_for_a_new_one(
    adapter: ReplicateAdapter,
) -> None:
    with pytest.raises(ProviderRetriableError, match="no longer knows") as caught:
        await adapter.poll({"prediction_id": "gone"}, image_request())

    assert caught.value.resubmit is True


async def test_prediction_whose_output_was_deleted_asks_for_a_new_one(
    fake: FakeReplicate, adapter: ReplicateAdapter
) -> None:
    fake.polls_before_done = 0
    fake.data_removed = True
    request = image_request()
    handle = await adapter.submit(request)

    with pytest.raises(ProviderRetriableError, match="deleted") as caught:
        await adapter.poll(handle, request)

    assert caught.value.resubmit is True


async def test_output_file_gone_from_delivery_asks_for_a_new_prediction(
    fake: FakeReplicate, adapter: ReplicateAdapter
) -> None:
    fake.polls_before_done = 0
    request = image_request()
    handle = await adapter.submit(request)
    fake.inject("files", 404)

    with pytest.raises(ProviderRetriableError, match="404") as caught:
        await adapter.poll(handle, request)

    assert caught.value.resubmit is True


async def test_unreachable_output_file_is_downloaded_on_the_next_poll(
    fake: FakeReplicate, adapter: ReplicateAdapter
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


async def test_create_read_timeout_is_retriable_and_never_creates_twice(
    fake: FakeReplicate,
) -> None:
    fake.create_delay_s = 0.5  # Replicate accepts the prediction but answers after our timeout
    async with fake.serve() as base_url:
        adapter = ReplicateAdapter.standalone(
            ProviderSettings(
                api_key=fake.api_token,
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


async def test_prediction_runs_end_to_end_against_the_fake_on_a_real_socket(
    fake: FakeReplicate,
) -> None:
    fake.outputs = 2
    request = image_request(number_results=2)
    async with fake.serve() as base_url:
        adapter = ReplicateAdapter.standalone(
            ProviderSettings(api_key=fake.api_token, base_url=base_url, retry_backoff_seconds=0.001)
        )
        handle = await adapter.submit(request)
        result, _ = await poll_until_done(adapter, handle, request)
        await adapter.aclose()

    assert handle["get_url"].startswith(f"{base_url}/v1/predictions/")
    assert len(result.outputs) == 2


async def test_cancel_stops_a_running_prediction(
    fake: FakeReplicate, adapter: ReplicateAdapter
) -> None:
    fake.polls_before_done = 10
    request = video_request()
    handle = await adapter.submit(request)
    assert isinstance(await adapter.poll(handle, request), Progress)

    await adapter.cancel(handle)

    assert fake.predictions[handle["prediction_id"]].status == "canceled"
    with pytest.raises(ProviderRejectedError, match="canceled upstream") as caught:
        await poll_until_done(adapter, handle, request)
    assert caught.value.content is False


async def test_cancel_of_a_finished_or_unknown_prediction_does_not_raise(
    fake: FakeReplicate, adapter: ReplicateAdapter
) -> None:
    request = image_request()
    handle = await adapter.submit(request)
    await poll_until_done(adapter, handle, request)

    await adapter.cancel(handle)  # answered unchanged
    await adapter.cancel({"prediction_id": "nope"})  # 404

    assert fake.cancels == 2
    assert fake.predictions[handle["prediction_id"]].status == "succeeded"


async def test_resume_after_a_crash_polls_the_same_prediction_with_a_new_adapter(
    fake: FakeReplicate,
) -> None:
    request = video_request()
    fake.output_kind = "video"
    first = replicate_adapter(fake)
    stored = json.dumps(await first.submit(request))
    await first.aclose()  # the worker process dies here

    second = replicate_adapter(fake)
    result, _ = await poll_until_done(second, json.loads(stored), request)
    await second.aclose()

    assert len(result.outputs) == 1
    assert fake.submissions == 1


async def test_prediction_that_never_finishes_keeps_reporting_progress(
    fake: FakeReplicate, adapter: ReplicateAdapter
) -> None:
    fake.polls_before_done = 10**9
    request = video_request()
    handle = await adapter.submit(request)

    outcomes = [await adapter.poll(handle, request) for _ in range(5)]

    assert all(isinstance(outcome, Progress) for outcome in outcomes)
    assert fake.poll_counts[handle["prediction_id"]] == 5


async def test_wrong_api_token_is_fatal(fake: FakeReplicate) -> None:
    adapter = replicate_adapter(fake, api_key="r8_wrong")

    with pytest.raises(ProviderFatalError, match="401"):
        await adapter.submit(image_request())
    await adapter.aclose()

    assert fake.submissions == 0


async def test_unknown_model_is_fatal(fake: FakeReplicate, adapter: ReplicateAdapter) -> None:
    fake.known_models = {VIDEO_MODEL}

    with pytest.raises(ProviderFatalError, match="does not know model"):
        await adapter.submit(image_request())


async def test_stored_urls_on_another_host_are_sent_to_the_configured_api_host(
    fake: FakeReplicate, adapter: ReplicateAdapter
) -> None:
    request = image_request()
    handle = await adapter.submit(request)
    public = {
        key: value.replace(FAKE_HOST, "https://api.replicate.com")
        for key, value in handle.items()
        if key.endswith("_url")
    }

    result, _ = await poll_until_done(adapter, {**handle, **public}, request)

    assert len(result.outputs) == 1


def test_log_progress_reads_the_newest_tqdm_bar_done_over_total() -> None:
    assert progress_from_logs(None) is None
    assert progress_from_logs("Using seed: 1\nloading") is None
    # tqdm redraws one line with carriage returns; later non-bar lines don't hide it.
    logs = (
        "Using seed: 1\n  5%|5         | 1/20 [00:00<00:09]\r 35%|###5      | 7/20 [00:03<00:06]\n"
    )
    assert progress_from_logs(logs + "saving\n") == 0.35
    assert progress_from_logs(" 0%|          | 0/0 [00:00<?]") == 0.0
