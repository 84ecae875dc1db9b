"""The ComfyUI adapter against a fake ComfyUI server (tests/fakes/comfyui.py).

Nothing leaves this machine: the fake runs in-process through `httpx.ASGITransport`, or
under uvicorn on 127.0.0.1 where a real socket is needed (timeouts)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.comfyui import FakeComfyUi
from tests.fakes.media import png_bytes
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
from vivix.providers.comfyui import ComfyUiAdapter
from vivix.providers.comfyui.adapter import builtin_template
from vivix.providers.comfyui.progress import (
    ProgressFeed,
    StepReport,
    report_of,
    step_nodes,
)
from vivix.settings import ProviderSettings

FAKE_HOST = "http://comfyui.test:8188"


def comfy_adapter(fake: FakeComfyUi, **overrides: Any) -> ComfyUiAdapter:
    settings: dict[str, Any] = {
        "api_key": fake.api_key or "",
        "base_url": FAKE_HOST,
        "retry_backoff_seconds": 0.001,
    }
    settings.update(overrides)
    return ComfyUiAdapter.standalone(
        ProviderSettings(**settings), transport=httpx.ASGITransport(app=fake.app)
    )


def image_request(options: dict[str, Any] | None = None, **params: Any) -> RenderRequest:
    return RenderRequest(
        generation_id="gen_1",
        model="sdxl",
        category="image",
        upstream_model="sdxl",
        params={"prompt": "a ceramic teapot", "number_results": 1, "seed": 42, **params},
        options=options or {},
    )


def small_workflow(**extra_nodes: dict[str, Any]) -> dict[str, Any]:
    """A tiny text-to-image graph (64 px) for tests that don't care about SDXL sizes."""
    graph: dict[str, Any] = {
        "4": {
            "class_type": "CheckpointLoaderSimple",
            "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"},
        },
        "5": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": 64, "height": 48, "batch_size": "{{number_results}}"},
        },
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "{{prompt}}", "clip": ["4", 1]}},
        "3": {
            "class_type": "KSampler",
            "inputs": {"seed": "{{seed}}", "steps": 4, "model": ["4", 0], "positive": ["6", 0]},
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {
            "class_type": "SaveImage",
            "inputs": {"filename_prefix": "vivix", "images": ["8", 0]},
        },
    }
    graph.update(extra_nodes)
    return graph


async def poll_until_done(
    adapter: ComfyUiAdapter, handle: UpstreamHandle, request: RenderRequest, max_polls: int = 20
) -> tuple[RenderResult, list[Progress]]:
    progress: list[Progress] = []
    for _ in range(max_polls):
        outcome = await adapter.poll(handle, request)
        if isinstance(outcome, RenderResult):
            return outcome, progress
        progress.append(outcome)
    raise AssertionError(f"no result after {max_polls} polls")


@pytest.fixture
def fake() -> FakeComfyUi:
    return FakeComfyUi(polls_queued=1, polls_running=1)


@pytest.fixture
async def adapter(fake: FakeComfyUi) -> AsyncIterator[ComfyUiAdapter]:
    adapter = comfy_adapter(fake)
    yield adapter
    await adapter.aclose()


def test_comfyui_adapter_implements_the_provider_protocol(fake: FakeComfyUi) -> None:
    adapter = comfy_adapter(fake)
    assert isinstance(adapter, ProviderAdapter)
    assert adapter.name == "comfyui"


def test_comfyui_needs_a_base_url() -> None:
    with pytest.raises(ProviderFatalError, match="BASE_URL"):
        ComfyUiAdapter.standalone(ProviderSettings(api_key="", base_url=None))


async def test_shipped_sdxl_workflow_renders_a_batch_of_three(
    fake: FakeComfyUi, adapter: ComfyUiAdapter
) -> None:
    request = image_request(number_results=3)

    handle = await adapter.submit(request)
    result, progress = await poll_until_done(adapter, handle, request)

    assert [p.status for p in progress] == ["queued", "processing"]
    images = fake.history[handle["prompt_id"]]["outputs"]["9"]["images"]
    served = [fake.files[(i["filename"], i["subfolder"], i["type"])].data for i in images]
    assert [o.data for o in result.outputs] == served
    assert len(set(served)) == 3
    assert {o.content_type for o in result.outputs} == {"image/png"}
    assert {(o.width, o.height) for o in result.outputs} == {(1024, 1024)}
    assert fake.submissions == 1
    assert fake.client_ids[0]  # ComfyUI routes its events by client id


async def test_shipped_workflow_gets_typed_values_for_whole_placeholders(
    fake: FakeComfyUi, adapter: ComfyUiAdapter
) -> None:
    request = image_request(
        negative_prompt="blurry", aspect_ratio="16:9", number_results=2, seed=123456789
    )

    await adapter.submit(request)

    expected = json.loads(json.dumps(builtin_template().graph))
    expected["3"]["inputs"]["seed"] = 123456789
    expected["5"]["inputs"].update({"width": 1024, "height": 576, "batch_size": 2})
    expected["6"]["inputs"]["text"] = "a ceramic teapot"
    expected["7"]["inputs"]["text"] = "blurry"
    assert fake.received == [expected]


async def test_placeholders_inside_longer_strings_are_replaced_as_text(
    fake: FakeComfyUi, adapter: ComfyUiAdapter
) -> None:
    workflow = small_workflow()
    workflow["6"]["inputs"]["text"] = "masterpiece, {{ prompt }}, framed {{aspect_ratio}}"
    workflow["9"]["inputs"]["filename_prefix"] = "gen-{{seed}}-{{width}}x{{height}}"
    request = image_request({"workflow_json": json.dumps(workflow)}, aspect_ratio="4:5", seed=7)

    await adapter.submit(request)

    (graph,) = fake.received
    assert graph["6"]["inputs"]["text"] == "masterpiece, a ceramic teapot, framed 4:5"
    assert graph["9"]["inputs"]["filename_prefix"] == "gen-7-816x1024"
    assert graph["3"]["inputs"]["seed"] == 7
    assert graph["5"]["inputs"]["batch_size"] == 1
    assert graph["6"]["inputs"]["clip"] == ["4", 1]  # links are left alone


async def test_unknown_placeholder_is_refused_before_anything_is_queued(
    fake: FakeComfyUi, adapter: ComfyUiAdapter
) -> None:
    workflow = small_workflow()
    workflow["6"]["inputs"]["text"] = "{{prompt}} in the style of {{artist}}"

    with pytest.raises(ProviderFatalError, match=r"unknown placeholder\(s\) \{\{artist\}\}"):
        await adapter.submit(image_request({"workflow_json": workflow}))

    assert fake.submit_attempts == 0


async def test_ui_format_workflow_is_refused_with_a_hint(
    fake: FakeComfyUi, adapter: ComfyUiAdapter
) -> None:
    with pytest.raises(ProviderFatalError, match="API Format"):
        await adapter.submit(image_request({"workflow_json": {"nodes": [], "links": []}}))


async def test_workflow_file_is_read_from_the_route_path(
    fake: FakeComfyUi, adapter: ComfyUiAdapter, tmp_path: Path
) -> None:
    path = tmp_path / "flow.json"
    path.write_text(json.dumps(small_workflow()))
    request = image_request({"workflow": str(path)}, number_results=2)

    handle = await adapter.submit(request)
    result, _ = await poll_until_done(adapter, handle, request)

    assert fake.received[0]["5"]["inputs"] == {"width": 64, "height": 48, "batch_size": 2}
    assert [(o.width, o.height) for o in result.outputs] == [(64, 48), (64, 48)]


async def test_missing_workflow_file_is_a_misconfigured_route(
    adapter: ComfyUiAdapter, tmp_path: Path
) -> None:
    with pytest.raises(ProviderFatalError, match="cannot be read"):
        await adapter.submit(image_request({"workflow": str(tmp_path / "nope.json")}))


async def test_output_node_picks_which_node_files_are_returned(
    fake: FakeComfyUi, adapter: ComfyUiAdapter
) -> None:
    workflow = small_workflow(
        **{"10": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}}
    )
    saved = image_request({"workflow_json": workflow})
    preview = image_request({"workflow_json": workflow, "output_node": 10})

    saved_result, _ = await poll_until_done(adapter, await adapter.submit(saved), saved)
    handle = await adapter.submit(preview)
    preview_result, _ = await poll_until_done(adapter, handle, preview)

    outputs = fake.history[handle["prompt_id"]]["outputs"]
    preview_file = outputs["10"]["images"][0]
    assert preview_file["type"] == "temp"
    assert [o.data for o in preview_result.outputs] == [
        fake.files[(preview_file["filename"], "", "temp")].data
    ]
    assert len(saved_result.outputs) == 1  # saved files only, previews left out


async def test_reference_image_is_uploaded_and_named_in_load_image(
    fake: FakeComfyUi, adapter: ComfyUiAdapter
) -> None:
    reference = png_bytes(32, 32, 5)
    workflow = small_workflow(
        **{"11": {"class_type": "LoadImage", "inputs": {"image": "{{reference_image}}"}}}
    )
    request = image_request(
        {"workflow_json": workflow}, reference_images=["https://img.example/a.png"]
    )
    request.reference_images = [ReferenceImage("https://img.example/a.png", reference, "image/png")]

    handle = await adapter.submit(request)
    await poll_until_done(adapter, handle, request)

    assert fake.uploads == {"vivix-gen_1-1.png": reference}
    assert fake.received[0]["11"]["inputs"]["image"] == "vivix-gen_1-1.png"


async def test_workflow_needing_a_reference_image_rejects_a_request_without_one(
    fake: FakeComfyUi, adapter: ComfyUiAdapter
) -> None:
    workflow = small_workflow(
        **{"11": {"class_type": "LoadImage", "inputs": {"image": "{{reference_image}}"}}}
    )

    with pytest.raises(ProviderRejectedError, match="reference image"):
        await adapter.submit(image_request({"workflow_json": workflow}))

    assert fake.submit_attempts == 0


async def test_reference_image_without_fetched_bytes_cannot_be_uploaded(
    fake: FakeComfyUi, adapter: ComfyUiAdapter
) -> None:
    workflow = small_workflow(
        **{"11": {"class_type": "LoadImage", "inputs": {"image": "{{reference_image}}"}}}
    )
    request = image_request(
        {"workflow_json": workflow}, reference_images=["https://img.example/a.png"]
    )

    with pytest.raises(ProviderRejectedError, match="could not be fetched"):
        await adapter.submit(request)

    assert fake.uploads == {}


async def test_video_workflow_gets_frames_from_duration_and_fps(
    fake: FakeComfyUi, adapter: ComfyUiAdapter
) -> None:
    workflow = {
        "5": {
            "class_type": "EmptyHunyuanLatentVideo",
            "inputs": {"width": 64, "height": 48, "length": "{{frames}}", "batch_size": 1},
        },
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "{{prompt}}, {{duration}}s"}},
        "9": {
            "class_type": "VHS_VideoCombine",
            "inputs": {"frame_rate": "{{fps}}", "filename_prefix": "clip"},
        },
    }
    request = RenderRequest(
        generation_id="gen_2",
        model="wan",
        category="video",
        upstream_model="wan",
        params={"prompt": "waves", "duration": 2, "seed": 1},
        options={"workflow_json": workflow, "fps": 8, "extra_frames": 1},
    )

    handle = await adapter.submit(request)
    result, _ = await poll_until_done(adapter, handle, request)

    (graph,) = fake.received
    assert graph["5"]["inputs"]["length"] == 17
    assert graph["9"]["inputs"]["frame_rate"] == 8
    assert graph["6"]["inputs"]["text"] == "waves, 2s"
    (video,) = result.outputs
    assert video.content_type == "video/mp4"
    assert (video.width, video.height) == (64, 48)
    assert video.duration_s == pytest.approx(17 / 8, abs=0.2)


async def test_duration_placeholder_without_a_duration_param_is_a_misconfigured_route(
    adapter: ComfyUiAdapter,
) -> None:
    workflow = small_workflow()
    workflow["6"]["inputs"]["text"] = "{{prompt}} for {{duration}} seconds"

    with pytest.raises(ProviderFatalError, match="duration"):
        await adapter.submit(image_request({"workflow_json": workflow}))


async def test_values_that_fail_validation_reject_the_generation(
    fake: FakeComfyUi, adapter: ComfyUiAdapter
) -> None:
    fake.checkpoints = {"flux1-dev.safetensors"}

    with pytest.raises(ProviderRejectedError, match="ckpt_name") as caught:
        await adapter.submit(image_request())

    assert caught.value.content is False
    assert fake.submissions == 0


async def test_a_node_class_the_server_lacks_is_a_misconfigured_route(
    fake: FakeComfyUi, adapter: ComfyUiAdapter
) -> None:
    workflow = small_workflow(**{"12": {"class_type": "UltimateSDUpscale", "inputs": {}}})

    with pytest.raises(ProviderFatalError, match="invalid_prompt"):
        await adapter.submit(image_request({"workflow_json": workflow}))


async def test_execution_error_rejects_the_generation(
    fake: FakeComfyUi, adapter: ComfyUiAdapter
) -> None:
    fake.failure = "error"
    request = image_request()
    handle = await adapter.submit(request)

    with pytest.raises(ProviderRejectedError, match="KSampler: RuntimeError") as caught:
        await poll_until_done(adapter, handle, request)

    assert caught.value.content is False


async def test_out_of_memory_is_transient_and_needs_a_new_run(
    fake: FakeComfyUi, adapter: ComfyUiAdapter
) -> None:
    fake.failure = "oom"
    request = image_request()
    handle = await adapter.submit(request)

    with pytest.raises(ProviderRetriableError, match="OutOfMemoryError") as caught:
        await poll_until_done(adapter, handle, request)

    assert caught.value.resubmit is True


async def test_safety_checker_failure_is_a_content_rejection(
    fake: FakeComfyUi, adapter: ComfyUiAdapter
) -> None:
    fake.failure = "content"
    request = image_request()
    handle = await adapter.submit(request)

    with pytest.raises(ProviderRejectedError) as caught:
        await poll_until_done(adapter, handle, request)

    assert caught.value.content is True


async def test_429_on_submit_waits_for_retry_after_and_queues_once(fake: FakeComfyUi) -> None:
    # A backoff this long would blow the time limit: only Retry-After can make it pass.
    adapter = comfy_adapter(fake, retry_backoff_seconds=5.0)
    delays: list[float] = []
    compute_delay = adapter._http._delay

    def recording_delay(attempt: int, retry_after: float | None) -> float:
        delays.append(compute_delay(attempt, retry_after))
        return delays[-1]

    adapter._http._delay = recording_delay  # type: ignore[method-assign]
    fake.inject("prompt", 429, times=2, retry_after="0.02")
    request = image_request()

    async with asyncio.timeout(2):
        handle = await adapter.submit(request)
        await poll_until_done(adapter, handle, request)
    await adapter.aclose()

    assert delays == [0.02, 0.02]
    assert fake.submit_attempts == 3
    assert fake.submissions == 1


async def test_5xx_before_success_still_renders_with_one_run(
    fake: FakeComfyUi, adapter: ComfyUiAdapter
) -> None:
    fake.inject("prompt", 503, times=2)
    fake.inject("history", 500, times=2)
    fake.inject("queue", 502, times=1)
    fake.inject("view", 504, times=1)
    request = image_request()

    handle = await adapter.submit(request)
    result, _ = await poll_until_done(adapter, handle, request)

    assert len(result.outputs) == 1
    assert fake.submit_attempts == 3
    assert fake.submissions == 1


async def test_unreachable_history_keeps_polling_the_same_run(
    fake: FakeComfyUi, adapter: ComfyUiAdapter
) -> None:
    request = image_request()
    handle = await adapter.submit(request)
    fake.inject("history", 502, times=10)

    with pytest.raises(ProviderRetriableError, match="502") as caught:
        await adapter.poll(handle, request)

    assert caught.value.resubmit is False


async def test_unreachable_server_keeps_the_run_and_polls_again_later() -> None:
    # Nothing listens on port 1 of the loopback: every connection is refused.
    adapter = ComfyUiAdapter.standalone(
        ProviderSettings(
            api_key="", base_url="http://127.0.0.1:1", retries=1, retry_backoff_seconds=0.001
        )
    )

    with pytest.raises(ProviderRetriableError, match="cannot connect") as caught:
        await adapter.poll({"prompt_id": "p-1"}, image_request())
    await adapter.aclose()

    assert caught.value.resubmit is False


async def test_500_on_submit_is_not_retried_because_it_may_have_been_queued(
    fake: FakeComfyUi, adapter: ComfyUiAdapter
) -> None:
    fake.inject("prompt", 500, times=10)

    with pytest.raises(ProviderRetriableError, match="500"):
        await adapter.submit(image_request())

    assert fake.submit_attempts == 1


async def test_submit_read_timeout_is_retriable_and_never_queues_twice(fake: FakeComfyUi) -> None:
    fake.submit_delay_s = 0.5  # ComfyUI queues the run but answers after our timeout
    async with fake.serve() as base_url:
        adapter = ComfyUiAdapter.standalone(
            ProviderSettings(
                api_key="", base_url=base_url, retry_backoff_seconds=0.001, timeout_seconds=0.1
            )
        )
        with pytest.raises(ProviderRetriableError, match="timed out"):
            await adapter.submit(image_request({"workflow_json": small_workflow()}))
        await adapter.aclose()

    assert fake.submit_attempts == 1
    assert fake.submissions == 1


async def test_a_pending_run_reports_its_place_in_the_queue_by_number(
    fake: FakeComfyUi, adapter: ComfyUiAdapter
) -> None:
    fake.add_foreign_run(running=True)
    fake.add_foreign_run(running=False)
    fake.add_foreign_run(running=False)
    request = image_request({"workflow_json": small_workflow()})
    handle = await adapter.submit(request)
    later = await adapter.submit(image_request({"workflow_json": small_workflow()}))

    # Two foreign runs were queued first; the one queued after ours doesn't count.
    assert await adapter.poll(handle, request) == Progress(status="queued", queue_position=3)
    assert await adapter.poll(later, request) == Progress(status="queued", queue_position=4)
    for prompt_id in list(fake.runs)[1:3]:
        fake.runs[prompt_id].state = "deleted"  # the two foreign pending runs are gone
    assert await adapter.poll(handle, request) == Progress(status="queued", queue_position=1)


async def test_cancel_of_a_pending_run_deletes_it_from_the_queue(
    fake: FakeComfyUi, adapter: ComfyUiAdapter
) -> None:
    foreign = fake.add_foreign_run(running=True)
    request = image_request({"workflow_json": small_workflow()})
    handle = await adapter.submit(request)
    assert await adapter.poll(handle, request) == Progress(status="queued", queue_position=1)

    await adapter.cancel(handle)

    assert fake.deleted == [handle["prompt_id"]]
    assert fake.runs[handle["prompt_id"]].state == "deleted"
    assert fake.interrupts == []  # the running run is someone else's
    assert fake.running is not None
    assert fake.running.prompt_id == foreign


async def test_cancel_of_a_running_run_interrupts_only_that_run(
    fake: FakeComfyUi, adapter: ComfyUiAdapter
) -> None:
    fake.polls_running = 10**9
    request = image_request({"workflow_json": small_workflow()})
    handle = await adapter.submit(request)
    await adapter.poll(handle, request)
    assert await adapter.poll(handle, request) == Progress(status="processing")

    await adapter.cancel(handle)

    assert fake.interrupts == [{"prompt_id": handle["prompt_id"]}]
    assert fake.deleted == []
    with pytest.raises(ProviderRejectedError, match="canceled upstream") as caught:
        await adapter.poll(handle, request)
    assert caught.value.content is False


async def test_cancel_of_a_finished_or_unknown_run_does_nothing(
    fake: FakeComfyUi, adapter: ComfyUiAdapter
) -> None:
    request = image_request({"workflow_json": small_workflow()})
    handle = await adapter.submit(request)
    await poll_until_done(adapter, handle, request)

    await adapter.cancel(handle)
    await adapter.cancel({"prompt_id": "not-a-run"})
    await adapter.cancel({})

    assert fake.deleted == []
    assert fake.interrupts == []


async def test_cancel_never_raises_when_comfyui_is_unreachable(
    fake: FakeComfyUi, adapter: ComfyUiAdapter
) -> None:
    fake.inject("queue", 503, times=10)

    await adapter.cancel({"prompt_id": "anything"})


async def test_resume_after_a_crash_polls_the_same_run_with_a_new_adapter(
    fake: FakeComfyUi,
) -> None:
    request = image_request({"workflow_json": small_workflow()}, number_results=2)
    first = comfy_adapter(fake)
    stored = json.dumps(await first.submit(request))
    await first.aclose()  # the worker process dies here

    second = comfy_adapter(fake)
    result, _ = await poll_until_done(second, json.loads(stored), request)
    await second.aclose()

    assert len(result.outputs) == 2
    assert fake.submissions == 1


async def test_a_run_the_server_forgot_asks_for_a_new_submission(
    fake: FakeComfyUi, adapter: ComfyUiAdapter
) -> None:
    request = image_request({"workflow_json": small_workflow()})
    handle = await adapter.submit(request)
    fake.restart()

    with pytest.raises(ProviderRetriableError, match="no longer knows") as caught:
        await adapter.poll(handle, request)

    assert caught.value.resubmit is True


async def test_a_run_that_never_finishes_keeps_reporting_progress(
    fake: FakeComfyUi, adapter: ComfyUiAdapter
) -> None:
    fake.polls_running = 10**9
    request = image_request({"workflow_json": small_workflow()})
    handle = await adapter.submit(request)

    outcomes = [await adapter.poll(handle, request) for _ in range(5)]

    assert [o.status for o in outcomes if isinstance(o, Progress)] == ["queued"] + [
        "processing"
    ] * 4


async def test_api_key_goes_as_a_bearer_token_to_an_authenticating_proxy() -> None:
    fake = FakeComfyUi(api_key="proxy-secret")
    adapter = comfy_adapter(fake)
    request = image_request({"workflow_json": small_workflow()})

    handle = await adapter.submit(request)
    result, _ = await poll_until_done(adapter, handle, request)
    await adapter.aclose()

    assert len(result.outputs) == 1


async def test_a_key_the_proxy_refuses_is_fatal() -> None:
    fake = FakeComfyUi(api_key="proxy-secret")
    adapter = comfy_adapter(fake, api_key="wrong")

    with pytest.raises(ProviderFatalError, match="401"):
        await adapter.submit(image_request({"workflow_json": small_workflow()}))
    await adapter.aclose()

    assert fake.submissions == 0


@pytest.mark.parametrize(
    "options",
    [
        {"workflow": "a.json", "workflow_json": {}},
        {"workflow": 5},
        {"output_node": True},
        {"size_multiple": 0},
        {"fps": "fast"},
    ],
)
async def test_bad_route_options_are_a_misconfigured_route(
    fake: FakeComfyUi, adapter: ComfyUiAdapter, options: dict[str, Any]
) -> None:
    with pytest.raises(ProviderFatalError, match="comfyui route option"):
        await adapter.submit(image_request(options))

    assert fake.submit_attempts == 0


def test_shipped_template_uses_only_the_documented_placeholders() -> None:
    template = builtin_template()

    assert template.placeholders == {
        "prompt",
        "negative_prompt",
        "seed",
        "width",
        "height",
        "number_results",
    }


async def test_a_running_run_reports_the_progress_events_of_its_websocket(
    fake: FakeComfyUi,
) -> None:
    fake.polls_running = 5
    async with fake.serve() as base_url:
        adapter = ComfyUiAdapter.standalone(
            ProviderSettings(api_key="", base_url=base_url, retry_backoff_seconds=0.001)
        )
        try:
            request = image_request({"workflow_json": small_workflow()})
            handle = await adapter.submit(request)
            fractions: list[float | None] = []
            for _ in range(40):
                outcome = await adapter.poll(handle, request)
                if isinstance(outcome, RenderResult):
                    break
                if outcome.status == "processing":
                    fractions.append(outcome.fraction)
                await asyncio.sleep(0.05)  # the event arrives beside the HTTP answer
            else:
                raise AssertionError("the run never finished")
        finally:
            await adapter.aclose()

    # The fake sends step k of 5 at the run's (k+1)-th status check while it runs; a
    # poll reports the newest event received by then.
    seen = [f for f in fractions if f is not None]
    assert set(seen) <= {0.0, 0.2, 0.4, 0.6, 0.8}
    assert [f for f in seen if f > 0], fractions
    assert seen == sorted(seen)
    assert fake.sockets == {}  # closed with the adapter


def test_progress_events_are_read_as_comfyui_sends_them() -> None:
    progress = {"value": 3, "max": 12, "prompt_id": "p1", "node": "3"}
    assert report_of({"type": "progress", "data": progress}) == StepReport("p1", 0.25, "3")
    state = {
        "prompt_id": "p2",
        "nodes": {"3": {"value": 10, "max": 10, "state": "finished"}, "8": {"value": 5, "max": 30}},
    }
    assert report_of({"type": "progress_state", "data": state}) == StepReport("p2", 0.375)
    assert report_of({"type": "progress", "data": {**progress, "max": 0}}) is None
    assert report_of({"type": "executing", "data": {"node": "3", "prompt_id": "p1"}}) is None
    assert report_of({"type": "status", "data": {"status": {}, "sid": "x"}}) is None
    assert report_of(["progress"]) is None


def test_a_workflow_with_two_samplers_is_half_done_when_the_first_one_ends() -> None:
    workflow = {
        "3": {"class_type": "KSampler", "inputs": {}},
        "5": {"class_type": "KSamplerSelect", "inputs": {}},
        "8": {"class_type": "KSamplerAdvanced", "inputs": {}},
        "9": {"class_type": "SaveImage", "inputs": {}},
    }
    assert step_nodes(workflow) == 2
    feed = ProgressFeed("http://comfy.test", "client", None)

    def step(node: str, value: int) -> None:
        data = {"value": value, "max": 20, "prompt_id": "p1", "node": node}
        feed.note(json.dumps({"type": "progress", "data": data}))

    step("3", 5)  # an event may come before the answer to POST /prompt
    feed.expect("p1", step_nodes(workflow))
    assert feed.fraction("p1") == 0.125
    step("3", 20)
    assert feed.fraction("p1") == 0.5  # the base sampler is done, the refiner is not
    step("8", 10)
    assert feed.fraction("p1") == 0.75
    step("8", 20)
    assert feed.fraction("p1") == 1.0
    # A run resumed from elsewhere (no workflow known) counts the nodes it has seen.
    feed.note(
        json.dumps(
            {"type": "progress", "data": {"value": 20, "max": 20, "prompt_id": "p2", "node": "3"}}
        )
    )
    assert feed.fraction("p2") == 1.0
    # progress_state covers the whole graph: it wins over per-node events.
    state = {
        "prompt_id": "p1",
        "nodes": {"3": {"value": 20, "max": 20}, "8": {"value": 0, "max": 20}},
    }
    feed.note(json.dumps({"type": "progress_state", "data": state}))
    assert feed.fraction("p1") == 0.5
    feed.forget("p1")
    assert feed.fraction("p1") is None
