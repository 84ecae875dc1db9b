"""The built-in local renderer: procedural, deterministic media made offline.

Plain module-level functions returning encoded bytes, so the worker can run them in a
process pool. The prompt picks the palette, motifs and music (see `theme`); the seed (and
`variation`) picks the layout and the notes. Same inputs give byte-identical output for the
same build of NumPy, Pillow and PyAV/FFmpeg: randomness comes only from
`numpy.random.default_rng` seeded from the inputs, and the encoders run with fixed options,
a fixed thread count and bitexact flags (no version strings or timestamps in the files).
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from vivix.renderer import RenderCanceled
from vivix.renderer.audio import (
    SAMPLE_RATE,
    audio_frames,
    encode_mp3,
    encode_wav,
    synthesize,
)
from vivix.renderer.composition import compose_scene
from vivix.renderer.palette import palette_for
from vivix.renderer.scene import Scene
from vivix.renderer.theme import read_theme

ASPECT_RATIOS: dict[str, Fraction] = {
    "1:1": Fraction(1, 1),
    "4:5": Fraction(4, 5),
    "9:16": Fraction(9, 16),
    "16:9": Fraction(16, 9),
}
IMAGE_LONG_SIDE = {"1K": 1024, "2K": 2048, "4K": 4096}
VIDEO_SHORT_SIDE = {"720p": 720, "1080p": 1080, "2160p": 2160}
IMAGE_FORMATS = ("png", "jpeg")
AUDIO_FORMATS = ("mp3", "wav")
MAX_SIDE = 8192
MAX_DURATION_S = 120
# Separate random streams, so that adding audio to a video does not change its pictures.
PICTURE_STREAM, MUSIC_STREAM = 1, 2
# x264 output depends on the thread count: a fixed count keeps it the same on every machine.
# mbtree is off because, for heights that are not a multiple of 16 (1080, 900, 1350…), it
# reads uninitialized memory and the bytes vary from run to run (found with MALLOC_PERTURB_).
X264_OPTIONS = {
    "preset": "veryfast",
    "crf": "20",
    "threads": "2",
    "g": "48",
    "x264-params": "mbtree=0",
}


def _ratio(aspect_ratio: str) -> Fraction:
    try:
        return ASPECT_RATIOS[aspect_ratio]
    except KeyError:
        raise ValueError(
            f"unknown aspect_ratio {aspect_ratio!r}; expected one of {sorted(ASPECT_RATIOS)}"
        ) from None


def _side(sides: dict[str, int], kind: str, resolution: str) -> int:
    if resolution not in sides:
        raise ValueError(f"unknown {kind} resolution {resolution!r}; expected one of {list(sides)}")
    return sides[resolution]


def image_size(aspect_ratio: str, resolution: str) -> tuple[int, int]:
    """(width, height) with the long side 1024/2048/4096 and the other side rounded half to
    even (Python's `round` on an exact Fraction), e.g. 4:5 at 1K is (819, 1024)."""
    ratio = _ratio(aspect_ratio)
    long = _side(IMAGE_LONG_SIDE, "image", resolution)
    if ratio >= 1:
        return long, round(long / ratio)
    return round(long * ratio), long


def video_size(aspect_ratio: str, resolution: str) -> tuple[int, int]:
    """(width, height) with the short side 720/1080/2160 and the long side rounded half to
    even to an even number of pixels (H.264 4:2:0 needs even sides)."""
    ratio = _ratio(aspect_ratio)
    short = _side(VIDEO_SHORT_SIDE, "video", resolution)
    if ratio >= 1:
        return 2 * round(short * ratio / 2), short
    return short, 2 * round(short / ratio / 2)


def _check_int(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _check_prompt(prompt: object, negative_prompt: object) -> None:
    if not isinstance(prompt, str):
        raise ValueError("prompt must be a string")
    if negative_prompt is not None and not isinstance(negative_prompt, str):
        raise ValueError("negative_prompt must be a string or None")


def _entropy(digest: int, seed: int, stream: int, variation: int = 0) -> list[int]:
    return [seed, variation, stream, digest]


def _scene(
    prompt: str,
    negative_prompt: str | None,
    *,
    width: int,
    height: int,
    seed: int,
    variation: int,
    duration: float,
) -> Scene:
    theme = read_theme(prompt, negative_prompt)
    rng = np.random.default_rng(
        np.random.SeedSequence(_entropy(theme.digest, seed, PICTURE_STREAM, variation))
    )
    palette = palette_for(theme, rng)
    return compose_scene(theme, palette, width=width, height=height, duration=duration, rng=rng)


def render_image(
    prompt: str,
    *,
    width: int,
    height: int,
    seed: int,
    variation: int = 0,
    fmt: str = "png",
    negative_prompt: str | None = None,
) -> bytes:
    _check_prompt(prompt, negative_prompt)
    _check_int("width", width, 1, MAX_SIDE)
    _check_int("height", height, 1, MAX_SIDE)
    _check_int("seed", seed, 0, 2**64 - 1)
    _check_int("variation", variation, 0, 255)
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"unknown image format {fmt!r}; expected one of {IMAGE_FORMATS}")
    scene = _scene(
        prompt,
        negative_prompt,
        width=width,
        height=height,
        seed=seed,
        variation=variation,
        duration=0.0,
    )
    image = Image.fromarray(scene.render_rgb(0.0))
    buffer = io.BytesIO()
    if fmt == "png":
        # Level 3 is ~3x faster than the default 6 for a few percent more bytes.
        image.save(buffer, "PNG", compress_level=3)
    else:
        image.save(buffer, "JPEG", quality=92, subsampling="4:2:0")
    return buffer.getvalue()


def render_video(
    prompt: str,
    *,
    width: int,
    height: int,
    duration_s: int,
    seed: int,
    audio: bool = False,
    fps: int = 24,
    negative_prompt: str | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_progress: Callable[[float], None] | None = None,
) -> bytes:
    _check_prompt(prompt, negative_prompt)
    _check_int("width", width, 2, MAX_SIDE)
    _check_int("height", height, 2, MAX_SIDE)
    if width % 2 or height % 2:
        raise ValueError(f"video sides must be even for 4:2:0 chroma, got {width}x{height}")
    _check_int("duration_s", duration_s, 1, MAX_DURATION_S)
    _check_int("seed", seed, 0, 2**64 - 1)
    _check_int("fps", fps, 1, 60)
    stop = should_stop or (lambda: False)
    scene = _scene(
        prompt,
        negative_prompt,
        width=width,
        height=height,
        seed=seed,
        variation=0,
        duration=float(duration_s),
    )
    samples = None
    if audio:
        theme = read_theme(prompt, negative_prompt)
        samples = synthesize(
            theme,
            duration_s=duration_s,
            entropy=_entropy(theme.digest, seed, MUSIC_STREAM),
            should_stop=stop,
        )
    frames = duration_s * fps
    reported = 0.0
    # The mov muxer needs a real file to move the index to the front (faststart).
    with tempfile.TemporaryDirectory(prefix="vivix-render-") as tmp:
        path = Path(tmp) / "video.mp4"
        with av.open(
            str(path),
            "w",
            format="mp4",
            container_options={"fflags": "+bitexact", "movflags": "+faststart"},
        ) as container:
            video = container.add_stream("libx264", rate=fps, options=X264_OPTIONS)
            video.width, video.height = width, height
            video.pix_fmt = "yuv420p"
            context = video.codec_context
            context.flags |= av.codec.context.Flags.bitexact
            # Frames are BT.709 limited range; say so, or players may guess BT.601.
            context.colorspace = context.color_primaries = context.color_trc = 1
            context.color_range = 1
            sound = None
            if samples is not None:
                sound = container.add_stream("aac", rate=SAMPLE_RATE, layout="stereo")
                sound.bit_rate = 160_000
                sound.codec_context.flags |= av.codec.context.Flags.bitexact
            audio_done = 0
            for index in range(frames):
                if stop():
                    raise RenderCanceled
                frame = av.VideoFrame.from_ndarray(
                    scene.render_yuv420(index / fps), format="yuv420p"
                )
                frame.pts = index
                container.mux(video.encode(frame))
                if sound is not None and samples is not None:
                    # Interleave: audio up to the end of this frame.
                    until = min(samples.shape[1], (index + 1) * SAMPLE_RATE // fps)
                    for chunk in audio_frames(samples, audio_done, until):
                        container.mux(sound.encode(chunk))
                    audio_done = until
                fraction = 0.97 * (index + 1) / frames
                if on_progress is not None and fraction - reported >= 0.05:
                    on_progress(fraction)
                    reported = fraction
            container.mux(video.encode(None))
            if sound is not None:
                container.mux(sound.encode(None))
        data = path.read_bytes()
    if on_progress is not None:
        on_progress(1.0)
    return data


def render_audio(
    prompt: str,
    *,
    duration_s: int,
    seed: int,
    fmt: str = "mp3",
    should_stop: Callable[[], bool] | None = None,
) -> bytes:
    _check_prompt(prompt, None)
    _check_int("duration_s", duration_s, 1, MAX_DURATION_S)
    _check_int("seed", seed, 0, 2**64 - 1)
    if fmt not in AUDIO_FORMATS:
        raise ValueError(f"unknown audio format {fmt!r}; expected one of {AUDIO_FORMATS}")
    theme = read_theme(prompt)
    samples = synthesize(
        theme,
        duration_s=duration_s,
        entropy=_entropy(theme.digest, seed, MUSIC_STREAM),
        should_stop=should_stop,
    )
    if should_stop is not None and should_stop():
        raise RenderCanceled
    return encode_wav(samples) if fmt == "wav" else encode_mp3(samples)
