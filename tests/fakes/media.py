"""Tiny but real media files for fake providers to serve: a PNG, an H.264 MP4 and an MP3
that decoders (and our probes) accept. Deterministic for the same arguments and cached,
so a test suite encodes each one once."""

from __future__ import annotations

import io
import math
import random
from fractions import Fraction
from functools import lru_cache

import av
import numpy as np
from PIL import Image

VIDEO_FPS = 8  # enough to be a valid stream; few frames keep encoding fast
AUDIO_RATE = 22050


@lru_cache(maxsize=64)
def png_bytes(width: int = 64, height: int = 64, seed: int = 0) -> bytes:
    """A `width`×`height` RGB PNG; different seeds give different bytes."""
    rng = random.Random(seed)
    base = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
    image = Image.new("RGB", (width, height), base)
    # A diagonal stripe so the image isn't one flat colour (and seeds stay distinct).
    stripe = (255 - base[0], 255 - base[1], 255 - base[2])
    for x in range(min(width, height)):
        image.putpixel((x, x), stripe)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@lru_cache(maxsize=16)
def mp4_bytes(width: int = 64, height: int = 64, seconds: float = 1.0) -> bytes:
    """An H.264 MP4 (yuv420p, so width and height are rounded up to even numbers)."""
    width += width % 2
    height += height % 2
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=VIDEO_FPS)
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for index in range(max(1, round(seconds * VIDEO_FPS))):
            level = (index * 16) % 256
            pixels = np.full((height, width, 3), level, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


@lru_cache(maxsize=16)
def mp3_bytes(seconds: float = 1.0) -> bytes:
    """A mono 440 Hz tone as MP3."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=AUDIO_RATE)
        stream.layout = "mono"
        samples_total = max(1, round(seconds * AUDIO_RATE))
        chunk = 1152  # one MP3 frame
        for start in range(0, samples_total, chunk):
            count = min(chunk, samples_total - start)
            tone = np.array(
                [
                    math.sin(2 * math.pi * 440 * (start + i) / AUDIO_RATE) * 0.3
                    for i in range(count)
                ],
                dtype=np.float32,
            ).reshape(1, count)
            frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
            frame.sample_rate = AUDIO_RATE
            frame.pts = start
            frame.time_base = Fraction(1, AUDIO_RATE)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()
