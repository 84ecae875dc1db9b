"""The xAI adapter against a fake that speaks xAI's documented protocol.

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

from tests.fakes.openai_images import ScriptedFailure, serve_on_loopback
from tests.fakes.xai import FakeXai
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
from vivix.providers.xai import XaiAdapter
from vivix.settings import ProviderSettings

BASE_URL = "https://api.x.test"
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6300010000050001"
    "0d0a2db40000000049454e44ae426082"
)


def make_adapter(fake: FakeXai, **overrides: Any) -> XaiAdapter:
    settings: dict[str, Any] = {
        "api_key": fake.api_key,
        "base_url": BASE_URL,
        "retry_backoff_seconds": 0.001,
    }
    settings.update(overrides)
    return XaiAdapter.standalone(
        ProviderSettings(**settings), transport=httpx.ASGITransport(app=fake.app)
    )


@pytest.fixture
def fake() -> FakeXai:
    return FakeXai()


@pytest.fixture
async def adapter(fake: FakeXai) -> AsyncIterator[XaiAdapter]:
    adapter = make_adapter(fake)
    yield adapter
    await adapter.aclose()


def image_request(
    *,
    options: dict[str, Any] | None = None,
    references: list[ReferenceImage] | None = None,
    upstream_model: str = "grok-imagine-image-quality",
    **params: Any,
) -> RenderRequest:
    return RenderRequest(
        generation_id="gen-image",
        model="grok-imagine-image-quality",
        category="image",
        upstream_model=upstream_model,
        params={
            "prompt": "a misty forest at dawn",
            "aspect_ratio": "1:1",
            "resolution": "2K",
            "number_results": 1,
            **params,
        },
        options=options or {},
        reference_images=references or [],
    )


def video_request(
    *,
    options: dict[str, Any] | None = None,
    references: list[ReferenceImage] | None = None,
    upstream_model: str = "grok-imagine-video",
    **params: Any,
) -> RenderRequest:
    return RenderRequest(
        generation_id="gen-video",
        model="grok-imagine-video",
        category="video",
        upstream_model=upstream_model,
        params={
            "prompt": "neon-lit Tokyo street",
            "duration": 5,
            "aspect_ratio": "16:9",
            "resolution": "720p",
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


async def poll_until_done(
    adapter: XaiAdapter, handle: UpstreamHandle, request: RenderRequest
) -> RenderResult:
    for _ in range(20):
        outcome = await adapter.poll(handle, request)
        if isinstance(outcome, RenderResult):
            return outcome
    raise AssertionError("the job never finished")


def test_the_adapter_implements_the_protocol_with_xais_public_url() -> None:
    adapter = XaiAdapter.standalone(
        ProviderSettings(api_key="k"), transport=httpx.MockTransport(lambda r: httpx.Response(500))
    )
    assert isinstance(adapter, ProviderAdapter)
    assert adapter.name == "xai"
    assert XaiAdapter.default_base_url == "https://api.x.ai"


# -- images -------------------------------------------------------------------------------


async def test_images_by_url_are_downloaded_with_their_dimensions(
    adapter: XaiAdapter, fake: FakeXai
) -> None:
    request = image_request(number_results=3)
    handle = await adapter.submit(request)
    assert persisted(handle) == handle  # URLs only: the whole handle survives a crash

    result = await adapter.poll(handle, request)

    assert [output.data for output in result.outputs] == fake.served
    assert len(set(fake.served)) == 3
    for output in result.outputs:
        assert (output.content_type, output.width, output.height) == ("image/png", 64, 48)
    assert fake.submissions == 1


async def test_base64_images_are_decoded_and_never_persisted(
    adapter: XaiAdapter, fake: FakeXai
) -> None:
    request = image_request(number_results=2, options={"response_format": "b64_json"})
    handle = await adapter.submit(request)

    result = await adapter.poll(handle, request)

    assert [output.data for output in result.outputs] == fake.served
    assert result.outputs[0].width == 64
    assert fake.bodies[0][1]["response_format"] == "b64_json"
    # A resumed attempt has only the stored handle: it must submit again.
    with pytest.raises(ProviderRetriableError, match="generating again") as caught:
        await adapter.poll(persisted(handle), request)
    assert caught.value.retry_after_s == 0.0
    assert caught.value.resubmit is True


async def test_a_resumed_image_attempt_downloads_the_stored_urls_without_paying_again(
    fake: FakeXai,
) -> None:
    request = image_request(number_results=2)
    first = make_adapter(fake)
    stored = persisted(await first.submit(request))
    await first.aclose()  # the worker crashed after persisting the handle

    second = make_adapter(fake)
    try:
        result = await second.poll(stored, request)
    finally:
        await second.aclose()

    assert [output.data for output in result.outputs] == fake.served
    assert fake.submissions == 1


async def test_image_urls_that_expired_ask_for_a_new_submission(
    adapter: XaiAdapter, fake: FakeXai
) -> None:
    request = image_request()
    handle = persisted(await adapter.submit(request))
    fake.files.clear()  # xAI's temporary URLs now answer 404

    with pytest.raises(ProviderRetriableError, match="404") as caught:
        await adapter.poll(handle, request)

    assert caught.value.resubmit is True


async def test_an_unreachable_image_url_is_downloaded_on_the_next_poll(
    adapter: XaiAdapter, fake: FakeXai
) -> None:
    request = image_request()
    handle = persisted(await adapter.submit(request))
    fake.file_failures.upcoming.extend([ScriptedFailure(503)] * 4)

    with pytest.raises(ProviderRetriableError, match="503") as caught:
        await adapter.poll(handle, request)
    assert caught.value.resubmit is False

    assert [output.data for output in (await adapter.poll(handle, request)).outputs] == fake.served
    assert fake.submissions == 1


async def test_our_params_map_to_xais_image_fields(adapter: XaiAdapter, fake: FakeXai) -> None:
    request = image_request(
        aspect_ratio="4:5", resolution="4K", number_results=2, seed=7, negative_prompt="blurry"
    )
    await adapter.submit(request)

    assert fake.bodies == [
        (
            "/v1/images/generations",
            {
                "model": "grok-imagine-image-quality",
                "prompt": "a misty forest at dawn",
                "n": 2,
                "response_format": "url",
                "aspect_ratio": "3:4",  # xAI has no 4:5
                "resolution": "2k",  # its largest
            },
        )
    ]


async def test_route_options_override_the_mapping_and_add_fixed_fields(
    adapter: XaiAdapter, fake: FakeXai
) -> None:
    request = image_request(
        aspect_ratio="16:9",
        resolution="2K",
        options={
            "aspect_ratio_map": {"16:9": "20:9"},
            "resolution_map": {"2K": "1k"},
            "input": {"user": "vivix-operator"},
        },
    )
    await adapter.submit(request)

    body = fake.bodies[0][1]
    assert (body["aspect_ratio"], body["resolution"], body["user"]) == (
        "20:9",
        "1k",
        "vivix-operator",
    )


async def test_reference_images_are_edited_by_url(adapter: XaiAdapter, fake: FakeXai) -> None:
    one = image_request(references=[ReferenceImage("https://img.example/cat.png")])
    two = image_request(
        references=[
            ReferenceImage("https://img.example/a.png"),
            ReferenceImage("https://img.example/b.png"),
        ]
    )
    await adapter.submit(one)
    await adapter.submit(two)

    (path_one, body_one), (path_two, body_two) = fake.bodies
    assert path_one == path_two == "/v1/images/edits"
    assert body_one["image"] == {"url": "https://img.example/cat.png"}
    assert body_two["images"] == [
        {"url": "https://img.example/a.png"},
        {"url": "https://img.example/b.png"},
    ]


async def test_reference_bytes_can_travel_inline_as_data_uris(
    adapter: XaiAdapter, fake: FakeXai
) -> None:
    request = image_request(
        references=[ReferenceImage("https://img.example/cat.png", data=PNG)],
        options={"reference_images_as": "data_uri"},
    )
    await adapter.submit(request)

    assert fake.bodies[0][1]["image"]["url"].startswith("data:image/png;base64,iVBORw0KGgo")


async def test_a_provider_error_fails_the_generation_without_blaming_content(
    adapter: XaiAdapter, fake: FakeXai
) -> None:
    fake.fail_always(422, {"code": "Unprocessable Entity", "error": "prompt: too long"})

    with pytest.raises(ProviderRejectedError, match="prompt: too long") as caught:
        await adapter.submit(image_request())
    assert caught.value.content is False


async def test_a_moderation_refusal_is_a_content_rejection(
    adapter: XaiAdapter, fake: FakeXai
) -> None:
    fake.refuse_content = True

    with pytest.raises(ProviderRejectedError) as caught:
        await adapter.submit(image_request())
    assert caught.value.content is True


async def test_outputs_withheld_by_moderation_are_dropped(
    adapter: XaiAdapter, fake: FakeXai
) -> None:
    fake.withheld_outputs = 1
    request = image_request(number_results=2)
    result = await adapter.poll(await adapter.submit(request), request)
    assert [output.data for output in result.outputs] == fake.served  # the one that passed

    fake.withheld_outputs = 2
    with pytest.raises(ProviderRejectedError) as caught:
        await adapter.submit(request)
    assert caught.value.content is True


async def test_rate_limits_are_retried_after_the_announced_delay(
    adapter: XaiAdapter, fake: FakeXai
) -> None:
    fake.fail_next(429, times=2, retry_after="0.1")
    request = image_request()

    started = time.monotonic()
    result = await adapter.poll(await adapter.submit(request), request)

    assert time.monotonic() - started >= 0.19  # the backoff alone would be ~1 ms
    assert len(result.outputs) == 1
    assert (fake.post_attempts, fake.submissions) == (3, 1)


async def test_unavailable_then_available_submits_once(adapter: XaiAdapter, fake: FakeXai) -> None:
    fake.fail_next(503, times=2)

    await adapter.submit(image_request())

    assert (fake.post_attempts, fake.submissions) == (3, 1)


async def test_a_server_error_on_submit_is_not_resent(adapter: XaiAdapter, fake: FakeXai) -> None:
    # A 500 may come after the upstream took (and billed) the request: never resend it.
    fake.fail_next(500)

    with pytest.raises(ProviderRetriableError):
        await adapter.submit(image_request())
    assert fake.post_attempts == 1


async def test_persistent_unavailability_is_retriable(fake: FakeXai) -> None:
    fake.fail_always(503)
    adapter = make_adapter(fake, retries=2)
    try:
        with pytest.raises(ProviderRetriableError, match="503"):
            await adapter.submit(image_request())
    finally:
        await adapter.aclose()
    assert (fake.post_attempts, fake.submissions) == (3, 0)


async def test_a_timed_out_submit_is_never_sent_twice(fake: FakeXai) -> None:
    fake.submit_delay_s = 5.0
    async with serve_on_loopback(fake.app) as base_url:
        adapter = XaiAdapter.standalone(
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


async def test_served_outputs_are_fetched_from_the_fakes_own_address(fake: FakeXai) -> None:
    async with serve_on_loopback(fake.app) as base_url:
        adapter = XaiAdapter.standalone(
            ProviderSettings(
                api_key=fake.api_key, base_url=f"{base_url}/v1", retry_backoff_seconds=0.001
            )
        )
        try:
            request = image_request(number_results=2)
            result = await adapter.poll(await adapter.submit(request), request)
        finally:
            await adapter.aclose()
    assert [output.data for output in result.outputs] == fake.served
    downloads = [path for method, path in fake.requests if method == "GET"]
    assert len(downloads) == 2
    assert all(path.startswith("/files/") for path in downloads)


async def test_a_wrong_api_key_is_fatal(fake: FakeXai) -> None:
    # xAI answers an incorrect key with HTTP 400, which must not read as bad input.
    adapter = make_adapter(fake, api_key="xai-wrong-key")
    try:
        with pytest.raises(ProviderFatalError, match="Incorrect API key"):
            await adapter.submit(image_request())
    finally:
        await adapter.aclose()


async def test_missing_credentials_are_fatal(fake: FakeXai) -> None:
    adapter = make_adapter(fake, api_key="")
    try:
        with pytest.raises(ProviderFatalError, match="401"):
            await adapter.submit(video_request())
    finally:
        await adapter.aclose()


async def test_an_unknown_model_is_fatal(adapter: XaiAdapter) -> None:
    with pytest.raises(ProviderFatalError, match="404"):
        await adapter.submit(image_request(upstream_model="grok-imagine-nope"))


async def test_misconfigured_routes_are_fatal(adapter: XaiAdapter) -> None:
    with pytest.raises(ProviderFatalError, match="response_format"):
        await adapter.submit(image_request(options={"response_format": "png"}))
    audio = RenderRequest("gen-audio", "music", "audio", "grok-audio", {"prompt": "rain"})
    with pytest.raises(ProviderFatalError, match="audio"):
        await adapter.submit(audio)


# -- videos -------------------------------------------------------------------------------


async def test_a_video_reports_progress_then_delivers_the_mp4(
    adapter: XaiAdapter, fake: FakeXai
) -> None:
    request = video_request()
    handle = await adapter.submit(request)
    assert set(handle) == {"request_id"}

    first, second = await adapter.poll(handle, request), await adapter.poll(handle, request)
    result = await adapter.poll(handle, request)

    assert isinstance(first, Progress)
    assert isinstance(second, Progress)
    assert first.fraction is not None
    assert second.fraction is not None
    assert 0 < first.fraction < second.fraction < 1
    assert isinstance(result, RenderResult)
    (video,) = result.outputs
    assert video.data == fake.served[-1]
    assert (video.content_type, video.duration_s, video.width, video.height) == (
        "video/mp4",
        1.0,
        64,
        48,
    )


async def test_our_params_map_to_xais_video_fields(adapter: XaiAdapter, fake: FakeXai) -> None:
    image_to_video = video_request(
        upstream_model="grok-imagine-video-1.5",
        duration=6,
        aspect_ratio="4:5",
        resolution="1080p",
        audio=True,
        seed=3,
        references=[ReferenceImage("https://img.example/first-frame.png")],
    )
    by_references = video_request(
        resolution="1080p",
        options={"resolution_map": {"1080p": "720p"}},
        references=[
            ReferenceImage("https://img.example/a.png"),
            ReferenceImage("https://img.example/b.png"),
        ],
    )
    await adapter.submit(image_to_video)
    await adapter.submit(by_references)

    assert fake.bodies == [
        (
            "/v1/videos/generations",
            {
                "model": "grok-imagine-video-1.5",
                "prompt": "neon-lit Tokyo street",
                "duration": 6,
                "aspect_ratio": "3:4",
                "resolution": "1080p",
                "image": {"url": "https://img.example/first-frame.png"},
            },
        ),
        (
            "/v1/videos/generations",
            {
                "model": "grok-imagine-video",
                "prompt": "neon-lit Tokyo street",
                "duration": 5,
                "aspect_ratio": "16:9",
                "resolution": "720p",  # the base model stops at 720p: the route says so
                "reference_images": [
                    {"url": "https://img.example/a.png"},
                    {"url": "https://img.example/b.png"},
                ],
            },
        ),
    ]


async def test_a_video_resumes_on_a_new_adapter_after_a_crash(fake: FakeXai) -> None:
    request = video_request()
    before_crash = make_adapter(fake)
    stored = persisted(await before_crash.submit(request))
    assert isinstance(await before_crash.poll(stored, request), Progress)
    await before_crash.aclose()

    after_restart = make_adapter(fake)
    try:
        result = await poll_until_done(after_restart, stored, request)
    finally:
        await after_restart.aclose()

    assert result.outputs[0].data == fake.served[-1]
    assert (fake.post_attempts, fake.submissions) == (1, 1)


async def test_a_pending_answer_without_a_body_is_progress(
    adapter: XaiAdapter, fake: FakeXai
) -> None:
    fake.pending_as_202 = True
    request = video_request()
    handle = await adapter.submit(request)

    assert await adapter.poll(handle, request) == Progress(status="pending")
    assert isinstance(await poll_until_done(adapter, handle, request), RenderResult)


async def test_status_checks_are_retried_through_server_errors(
    adapter: XaiAdapter, fake: FakeXai
) -> None:
    fake.video_polls_before_done = 0
    request = video_request()
    handle = await adapter.submit(request)
    fake.poll_failures.upcoming.extend(
        [ScriptedFailure(503, {"code": "unavailable", "error": "later"})] * 2
    )

    assert isinstance(await adapter.poll(handle, request), RenderResult)
    assert fake.polls == 3


async def test_persistently_failing_status_checks_poll_the_same_video_again(
    adapter: XaiAdapter, fake: FakeXai
) -> None:
    request = video_request()
    handle = await adapter.submit(request)
    fake.poll_failures.forever = ScriptedFailure(503, {"code": "unavailable", "error": "later"})

    with pytest.raises(ProviderRetriableError, match="503") as caught:
        await adapter.poll(handle, request)

    assert caught.value.resubmit is False


async def test_a_finished_video_whose_file_is_gone_asks_for_a_new_submission(
    adapter: XaiAdapter, fake: FakeXai
) -> None:
    fake.video_polls_before_done = 0
    fake.file_failures.upcoming.append(ScriptedFailure(404))
    request = video_request()
    handle = await adapter.submit(request)

    with pytest.raises(ProviderRetriableError, match="404") as caught:
        await adapter.poll(handle, request)

    assert caught.value.resubmit is True


@pytest.mark.parametrize(
    ("error", "expected", "content"),
    [
        (
            {"code": "internal_error", "message": "Video generation failed."},
            ProviderRetriableError,
            None,
        ),
        (
            {"code": "invalid_argument", "message": "Image could not be fetched."},
            ProviderRejectedError,
            False,
        ),
        (
            {"code": "failed_precondition", "message": "Rejected by content moderation."},
            ProviderRejectedError,
            True,
        ),
    ],
)
async def test_a_failed_video_maps_by_its_error_code(
    adapter: XaiAdapter,
    fake: FakeXai,
    error: dict[str, str],
    expected: type[Exception],
    content: bool | None,
) -> None:
    fake.video_outcome, fake.video_error, fake.video_polls_before_done = "failed", error, 0
    request = video_request()
    handle = await adapter.submit(request)

    with pytest.raises(expected) as caught:
        await adapter.poll(handle, request)
    if content is not None:
        assert isinstance(caught.value, ProviderRejectedError)
        assert caught.value.content is content
    else:  # the job failed upstream: polling it again returns the same failure
        assert isinstance(caught.value, ProviderRetriableError)
        assert caught.value.resubmit is True


async def test_an_expired_video_asks_for_a_new_submission(
    adapter: XaiAdapter, fake: FakeXai
) -> None:
    fake.video_outcome, fake.video_polls_before_done = "expired", 0
    request = video_request()
    handle = await adapter.submit(request)

    with pytest.raises(ProviderRetriableError, match="expired") as caught:
        await adapter.poll(handle, request)
    assert caught.value.resubmit is True


async def test_a_video_withheld_by_moderation_is_a_content_rejection(
    adapter: XaiAdapter, fake: FakeXai
) -> None:
    fake.video_outcome, fake.video_polls_before_done = "withheld", 0
    request = video_request()
    handle = await adapter.submit(request)

    with pytest.raises(ProviderRejectedError) as caught:
        await adapter.poll(handle, request)
    assert caught.value.content is True


async def test_an_unknown_request_id_asks_for_a_new_submission(adapter: XaiAdapter) -> None:
    with pytest.raises(ProviderRetriableError, match="no longer knows") as caught:
        await adapter.poll({"request_id": "gone"}, video_request())
    assert caught.value.resubmit is True


async def test_cancel_is_a_no_op_because_xai_documents_no_cancel(
    adapter: XaiAdapter, fake: FakeXai
) -> None:
    request = video_request()
    handle = await adapter.submit(request)
    seen = list(fake.requests)

    await adapter.cancel(handle)  # running

    assert fake.requests == seen  # nothing was sent upstream
    result = await poll_until_done(adapter, handle, request)
    await adapter.cancel(handle)  # finished: still fine
    await adapter.cancel(persisted(await adapter.submit(image_request())))
    assert result.outputs


async def test_a_never_finishing_video_keeps_reporting_progress(
    adapter: XaiAdapter, fake: FakeXai
) -> None:
    fake.video_polls_before_done = None
    request = video_request()
    handle = await adapter.submit(request)

    outcomes = [await adapter.poll(handle, request) for _ in range(5)]

    assert all(isinstance(outcome, Progress) for outcome in outcomes)
    assert fake.submissions == 1  # the worker's deadline ends it, never a resubmission
