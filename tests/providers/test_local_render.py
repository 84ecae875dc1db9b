"""The built-in local renderer, checked with real decoders (Pillow, PyAV).

Renders are kept small and short except where a size is the point of the test."""

from __future__ import annotations

import asyncio
import io
import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from vivix.providers.base import ProviderRetriableError, RenderCanceled, RenderRequest
from vivix.providers.local.adapter import LocalAdapter
from vivix.renderer import render
from vivix.renderer.theme import read_theme

PROMPT = "neon city at night"


def _image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _mean_colour(data: bytes) -> np.ndarray:
    return np.asarray(_image(data).convert("RGB"), np.float64).reshape(-1, 3).mean(axis=0)


def _decoded_seconds(data: bytes, kind: str) -> float:
    with av.open(io.BytesIO(data)) as container:
        if kind == "audio":
            stream = container.streams.audio[0]
            return sum(frame.samples for frame in container.decode(stream)) / stream.rate
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return frames / float(stream.average_rate or 1)


@pytest.mark.parametrize(
    ("aspect_ratio", "resolution", "size"),
    [
        ("1:1", "1K", (1024, 1024)),
        ("1:1", "2K", (2048, 2048)),
        ("1:1", "4K", (4096, 4096)),
        ("16:9", "1K", (1024, 576)),
        ("16:9", "2K", (2048, 1152)),
        ("16:9", "4K", (4096, 2304)),
        ("9:16", "1K", (576, 1024)),
        ("9:16", "2K", (1152, 2048)),
        ("9:16", "4K", (2304, 4096)),
        ("4:5", "1K", (819, 1024)),  # 819.2
        ("4:5", "2K", (1638, 2048)),  # 1638.4
        ("4:5", "4K", (3277, 4096)),  # 3276.8
    ],
)
def test_image_size_puts_the_long_side_at_the_resolution(
    aspect_ratio: str, resolution: str, size: tuple[int, int]
) -> None:
    assert render.image_size(aspect_ratio, resolution) == size


@pytest.mark.parametrize(
    ("aspect_ratio", "resolution", "size"),
    [
        ("16:9", "720p", (1280, 720)),
        ("16:9", "1080p", (1920, 1080)),
        ("16:9", "2160p", (3840, 2160)),
        ("9:16", "720p", (720, 1280)),
        ("9:16", "1080p", (1080, 1920)),
        ("1:1", "720p", (720, 720)),
        ("1:1", "2160p", (2160, 2160)),
        ("4:5", "720p", (720, 900)),
        ("4:5", "1080p", (1080, 1350)),
        ("4:5", "2160p", (2160, 2700)),
    ],
)
def test_video_size_puts_the_short_side_at_the_resolution_with_even_sides(
    aspect_ratio: str, resolution: str, size: tuple[int, int]
) -> None:
    assert render.video_size(aspect_ratio, resolution) == size
    assert size[0] % 2 == 0
    assert size[1] % 2 == 0


@pytest.mark.parametrize("aspect_ratio", ["1:1", "4:5", "9:16", "16:9"])
@pytest.mark.parametrize(("fmt", "pil_format"), [("png", "PNG"), ("jpeg", "JPEG")])
def test_1k_image_decodes_at_exactly_the_requested_size(
    aspect_ratio: str, fmt: str, pil_format: str
) -> None:
    width, height = render.image_size(aspect_ratio, "1K")
    data = render.render_image(PROMPT, width=width, height=height, seed=1, fmt=fmt)
    image = _image(data)
    assert image.format == pil_format
    assert image.size == (width, height)
    assert image.mode == "RGB"


def test_4k_image_decodes_at_exactly_the_requested_size() -> None:
    width, height = render.image_size("4:5", "4K")
    data = render.render_image("misty forest at dawn", width=width, height=height, seed=2)
    assert _image(data).size == (3277, 4096)


def test_720p_video_with_audio_has_h264_and_aac_tracks_of_the_same_duration() -> None:
    width, height = render.video_size("16:9", "720p")
    data = render.render_video(PROMPT, width=width, height=height, duration_s=2, seed=1, audio=True)
    with av.open(io.BytesIO(data)) as container:
        video = container.streams.video[0]
        assert video.codec_context.name == "h264"
        assert (video.width, video.height) == (1280, 720)
        assert video.codec_context.pix_fmt == "yuv420p"
        assert video.frames == 48
        assert video.duration is not None
        assert float(video.duration * video.time_base) == pytest.approx(2.0, abs=0.01)
        assert len(container.streams.audio) == 1
        assert container.streams.audio[0].codec_context.name == "aac"
    assert _decoded_seconds(data, "video") == pytest.approx(2.0, abs=0.01)
    assert _decoded_seconds(data, "audio") == pytest.approx(2.0, abs=0.1)


def test_portrait_video_without_audio_has_no_audio_track() -> None:
    # 9:16 at a small size: the 720p numbers are checked above, the encoder path here.
    data = render.render_video(PROMPT, width=144, height=256, duration_s=1, seed=1)
    with av.open(io.BytesIO(data)) as container:
        assert not container.streams.audio
        video = container.streams.video[0]
        assert (video.width, video.height) == (144, 256)
        frame = next(container.decode(video=0))
        assert (frame.width, frame.height) == (144, 256)
        assert video.frames == 24


@pytest.mark.parametrize(("fmt", "codec"), [("mp3", "mp3"), ("wav", "pcm_s16le")])
def test_audio_decodes_to_the_requested_duration(fmt: str, codec: str) -> None:
    data = render.render_audio("calm rain over a harbour", duration_s=3, seed=4, fmt=fmt)
    with av.open(io.BytesIO(data)) as container:
        assert container.streams.audio[0].codec_context.name.startswith(codec)
    assert _decoded_seconds(data, "audio") == pytest.approx(3.0, abs=0.1)


def test_audio_is_loud_but_never_clips() -> None:
    data = render.render_audio("sunny meadow", duration_s=2, seed=9, fmt="wav")
    with av.open(io.BytesIO(data)) as container:
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    peak = np.abs(samples.astype(np.int32)).max()
    assert 0.5 * 32767 < peak < 32767


def _small_renders(seed: int, variation: int = 0) -> tuple[bytes, bytes, bytes]:
    return (
        render.render_image(PROMPT, width=160, height=96, seed=seed, variation=variation),
        render.render_video(PROMPT, width=160, height=90, duration_s=1, seed=seed, audio=True),
        render.render_audio(PROMPT, duration_s=1, seed=seed),
    )


def test_same_inputs_give_identical_bytes() -> None:
    assert _small_renders(7) == _small_renders(7)


def test_same_inputs_give_identical_bytes_in_another_process() -> None:
    # spawn: a fresh interpreter, with its own hash salt and memory layout.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        theirs = pool.submit(_small_renders, 7).result(timeout=120)
    assert theirs == _small_renders(7)


def test_a_different_seed_gives_different_bytes() -> None:
    ours, theirs = _small_renders(7), _small_renders(8)
    assert all(a != b for a, b in zip(ours, theirs, strict=True))


def test_variations_of_one_seed_are_distinct_images() -> None:
    images = {
        render.render_image(PROMPT, width=160, height=96, seed=7, variation=v) for v in range(4)
    }
    assert len(images) == 4


def test_different_prompts_get_visibly_different_palettes() -> None:
    neon = render.render_image("neon city at night", width=192, height=108, seed=1)
    forest = render.render_image("misty forest at dawn", width=192, height=108, seed=1)
    distance = np.linalg.norm(_mean_colour(neon) - _mean_colour(forest))
    assert distance > 60  # of 441 between black and white


def test_night_prompts_render_darker_than_snowy_ones() -> None:
    night = render.render_image("dark night sky", width=128, height=128, seed=3)
    snow = render.render_image("snowy field at noon", width=128, height=128, seed=3)
    assert _mean_colour(night).mean() + 60 < _mean_colour(snow).mean()


def test_unknown_words_map_to_a_stable_look() -> None:
    theme = read_theme("zorblax quintessa")
    assert theme == read_theme("zorblax quintessa")
    assert len(theme.motifs) >= 2
    assert theme.hues
    assert theme != read_theme("velmora tungsk")


def test_negative_prompt_removes_motifs_and_hues() -> None:
    assert "stars" in read_theme(PROMPT).motifs
    theme = read_theme(PROMPT, negative_prompt="no stars, no magenta")
    assert "stars" not in theme.motifs
    assert all(abs((h - 330.0 + 180.0) % 360.0 - 180.0) > 25.0 for h in theme.hues)


def test_should_stop_cancels_a_long_video_within_a_few_frames() -> None:
    calls = 0

    def stop_after_three() -> bool:
        nonlocal calls
        calls += 1
        return calls > 3

    with pytest.raises(RenderCanceled):
        render.render_video(
            PROMPT, width=1280, height=720, duration_s=10, seed=1, should_stop=stop_after_three
        )
    assert calls == 4  # checked before every frame: stopped at the fourth of 240


def test_should_stop_cancels_audio() -> None:
    with pytest.raises(RenderCanceled):
        render.render_audio(PROMPT, duration_s=30, seed=1, should_stop=lambda: True)


def test_progress_rises_and_ends_at_one() -> None:
    seen: list[float] = []
    render.render_video(PROMPT, width=160, height=90, duration_s=2, seed=1, on_progress=seen.append)
    assert len(seen) >= 5
    assert seen == sorted(seen)
    assert len(set(seen)) == len(seen)
    assert seen[-1] == 1.0
    assert 0.0 < seen[0] < 0.5


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: render.image_size("3:2", "1K"), "aspect_ratio"),
        (lambda: render.image_size("1:1", "8K"), "resolution"),
        (lambda: render.video_size("16:9", "480p"), "resolution"),
        (lambda: render.render_image(PROMPT, width=0, height=10, seed=1), "width"),
        (lambda: render.render_image(PROMPT, width=10, height=-5, seed=1), "height"),
        (lambda: render.render_image(PROMPT, width=10, height=10, seed=1, fmt="gif"), "format"),
        (lambda: render.render_image(PROMPT, width=10, height=10, seed=-1), "seed"),
        (lambda: render.render_video(PROMPT, width=101, height=100, duration_s=1, seed=1), "even"),
        (
            lambda: render.render_video(PROMPT, width=100, height=100, duration_s=0, seed=1),
            "duration",
        ),
        (lambda: render.render_audio(PROMPT, duration_s=1, seed=1, fmt="ogg"), "format"),
        (lambda: render.render_audio(PROMPT, duration_s=True, seed=1), "duration"),
    ],
)
def test_invalid_inputs_are_refused_with_value_error(call: object, message: str) -> None:
    assert callable(call)
    with pytest.raises(ValueError, match=message):
        call()


async def test_a_poll_canceled_twice_still_stops_the_render_before_returning(
    tmp_path: Path,
) -> None:
    """The client's cancel, its NOTIFY and the heartbeat can each cancel a job: a second
    cancel used to cut the wait short and clear the stop flag, so the render ran on and
    kept the pool's only process busy."""
    adapter = LocalAdapter(tmp_path / "scratch", processes=1)
    try:
        warm = _request("image", {"prompt": "warm up", "resolution": "1K"})
        await adapter.poll({"local": True}, warm)  # the pool's process exists and is idle
        long_video = _request("video", {"prompt": PROMPT, "resolution": "1080p", "duration": 10})
        job = asyncio.create_task(adapter.poll({"local": True}, long_video))
        await asyncio.sleep(0.5)  # the render process has picked it up
        assert adapter.active_renders == 1
        job.cancel()
        await asyncio.sleep(0)
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
        assert adapter.active_renders == 0, "poll returned while the render was still running"
        assert list((tmp_path / "scratch").iterdir()) == []  # the stop flag is cleaned up
        quick = await adapter.poll({"local": True}, warm)
        assert len(quick.outputs) == 1
    finally:
        await adapter.aclose()


def _request(category: str, params: dict[str, object]) -> RenderRequest:
    return RenderRequest(
        generation_id=f"test-{category}",
        model=f"vivix-local-{category}",
        category=category,
        upstream_model=category,
        params={"seed": 1, **params},
    )


async def test_a_killed_render_process_is_retriable_and_the_next_render_gets_a_new_pool(
    tmp_path: Path,
) -> None:
    """An out-of-memory kill breaks a process pool for good; the adapter replaces it."""
    adapter = LocalAdapter(tmp_path / "scratch", processes=1)
    try:
        warm = _request("image", {"prompt": "warm up", "resolution": "1K"})
        await adapter.poll({"local": True}, warm)
        long_video = _request("video", {"prompt": PROMPT, "resolution": "1080p", "duration": 10})
        job = asyncio.create_task(adapter.poll({"local": True}, long_video))
        await asyncio.sleep(0.5)
        assert adapter._pool is not None
        (pid,) = adapter._pool._processes  # the pool's one render process (CPython detail)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(ProviderRetriableError) as raised:
            await job
        assert raised.value.resubmit
        again = await adapter.poll({"local": True}, warm)
        assert len(again.outputs) == 1
    finally:
        await adapter.aclose()


async def test_canceling_renders_queued_behind_a_busy_pool_leaves_no_render_behind(
    tmp_path: Path,
) -> None:
    """One render process, three long renders: the first runs, the next waits in the
    pool's call queue, the last is still pending in the executor. Canceling all three
    ends every one of them (the pending one without ever starting)."""
    adapter = LocalAdapter(tmp_path / "scratch", processes=1)
    try:
        await adapter.poll({"local": True}, _request("image", {"prompt": "warm up"}))
        long_video = {"prompt": PROMPT, "resolution": "1080p", "duration": 10}
        jobs = [
            asyncio.create_task(adapter.poll({"local": True}, _request("video", long_video)))
            for _ in range(3)
        ]
        await asyncio.sleep(0.5)
        assert adapter.active_renders == 3
        for job in reversed(jobs):
            job.cancel()
        outcomes = await asyncio.gather(*jobs, return_exceptions=True)
        assert all(isinstance(o, asyncio.CancelledError) for o in outcomes), outcomes
        assert adapter.active_renders == 0
        assert list((tmp_path / "scratch").iterdir()) == []
    finally:
        await adapter.aclose()
