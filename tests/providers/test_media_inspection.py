"""`inspect_media`: real files of every container we store are recognised by their bytes
with the right type and facts; anything else — markup, JSON, truncated files, the wrong
kind of media — is NotMedia."""

from __future__ import annotations

import io
import math
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from tests.fakes.media import mp3_bytes, mp4_bytes, png_bytes
from vivix.providers.media import NotMedia, inspect_media

RATE = 16000


def image_bytes(fmt: str, size: tuple[int, int] = (40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 90)).save(buffer, format=fmt)
    return buffer.getvalue()


def audio_bytes(container: str, codec: str, seconds: float = 1.0, cover: bool = False) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container) as media:
        stream = media.add_stream(codec, rate=48000 if codec == "libopus" else RATE)
        stream.layout = "mono"
        if cover:  # an MP3 with album art: a picture stream that is no video
            picture = media.add_stream("mjpeg", rate=1)
            picture.width, picture.height, picture.pix_fmt = 16, 16, "yuvj420p"
            picture.disposition = av.stream.Disposition.attached_pic
        rate = stream.rate
        resampler = av.AudioResampler(format=stream.codec_context.format, layout="mono", rate=rate)
        total = int(seconds * rate)
        step = 960 if codec == "libopus" else 1024
        for start in range(0, total, step):
            count = min(step, total - start)
            tone = np.array(
                [math.sin(2 * math.pi * 330 * (start + i) / rate) * 0.2 for i in range(count)],
                dtype=np.float32,
            ).reshape(1, count)
            frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            frame.time_base = Fraction(1, rate)
            for converted in resampler.resample(frame):
                for packet in stream.encode(converted):
                    media.mux(packet)
        for packet in stream.encode():
            media.mux(packet)
        if cover:
            art = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
            for packet in picture.encode(art.reformat(format="yuvj420p")):
                media.mux(packet)
            for packet in picture.encode():
                media.mux(packet)
    return buffer.getvalue()


def webm_bytes() -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="webm") as media:
        stream = media.add_stream("libvpx", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
        for index in range(8):
            pixels = np.full((24, 32, 3), index * 30, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                media.mux(packet)
        for packet in stream.encode():
            media.mux(packet)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("fmt", "content_type"),
    [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp"), ("GIF", "image/gif")],
)
def test_images_are_typed_by_their_bytes(fmt: str, content_type: str) -> None:
    facts = inspect_media(image_bytes(fmt), "image")
    assert (facts.content_type, facts.width, facts.height) == (content_type, 40, 30)


def test_video_files_are_typed_with_their_size_and_duration() -> None:
    mp4 = inspect_media(mp4_bytes(64, 36, 1.0), "video")
    assert (mp4.content_type, mp4.width, mp4.height) == ("video/mp4", 64, 36)
    assert mp4.duration_s == pytest.approx(1.0, abs=0.2)
    webm = inspect_media(webm_bytes(), "video")
    assert (webm.content_type, webm.width, webm.height) == ("video/webm", 32, 24)


@pytest.mark.parametrize(
    ("container", "codec", "content_type"),
    [
        ("wav", "pcm_s16le", "audio/wav"),
        ("flac", "flac", "audio/flac"),
        ("ogg", "libopus", "audio/ogg"),
        ("ipod", "aac", "audio/mp4"),
        ("adts", "aac", "audio/aac"),
    ],
)
def test_audio_files_are_typed_with_their_duration(
    container: str, codec: str, content_type: str
) -> None:
    facts = inspect_media(audio_bytes(container, codec, 1.0), "audio")
    assert facts.content_type == content_type
    assert (facts.width, facts.height) == (None, None)
    if container != "adts":  # raw ADTS carries no duration
        assert facts.duration_s == pytest.approx(1.0, abs=0.2)


def test_mp3_with_and_without_album_art_is_audio() -> None:
    assert inspect_media(mp3_bytes(1.0), "audio").content_type == "audio/mpeg"
    assert inspect_media(audio_bytes("mp3", "libmp3lame", cover=True), "audio").content_type == (
        "audio/mpeg"
    )


@pytest.mark.parametrize(
    ("data", "category"),
    [
        (b"", "image"),
        (b'{"error": "not found"}', "image"),
        (b"<!DOCTYPE html><html><script>alert(1)</script></html>", "image"),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', "image"),
        (b"%PDF-1.7\n", "image"),
        (png_bytes(32, 32, 1)[:50], "image"),
        (image_bytes("JPEG", (256, 256))[:400], "image"),
        (image_bytes("BMP"), "image"),  # a real image, but not a type we serve
        (mp4_bytes(32, 32, 1.0), "image"),
        (png_bytes(32, 32, 1), "video"),
        (mp3_bytes(1.0), "video"),
        (mp4_bytes(32, 32, 1.0)[:300], "video"),
        (b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64, "video"),
        (b"<html>502 Bad Gateway</html>", "video"),
        (mp4_bytes(32, 32, 1.0), "audio"),  # a video is not an audio file
        (png_bytes(32, 32, 1), "audio"),
        (b"ID3" + b"\x00" * 40, "audio"),
        (b"RIFF\x10\x00\x00\x00WAVEjunkjunk", "audio"),
        (b"alert(document.cookie)", "audio"),
    ],
)
def test_anything_else_is_not_media(data: bytes, category: str) -> None:
    with pytest.raises(NotMedia) as refused:
        inspect_media(data, category)
    assert refused.value.reason
