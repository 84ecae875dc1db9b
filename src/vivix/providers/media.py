"""What a delivered file really is.

`inspect_media` decides from the bytes alone — never from the provider's content type or
file name — whether a file is media of the model's kind, and reads its facts (type,
size, duration). Anything else (an error page or JSON body served as the output, markup
a browser would run, a truncated file, audio where an image was asked for) raises
NotMedia: the worker never stores, serves or charges for it. Images are opened with
Pillow restricted to the formats we serve; audio and video are recognised by their
container signature and then demuxed with PyAV, which must decode a first frame of the
stream that matters.

`probe` fills in missing facts of a file an adapter already trusts (never raises).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace

from vivix.providers.base import OutputFile

IMAGE_TYPES = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "AVIF": "image/avif",
}
# Formats whose integrity Pillow checks without decoding pixels.
_VERIFIABLE = frozenset({"PNG", "GIF"})


class NotMedia(Exception):
    """The bytes are not media of the expected kind; `reason` says what they are not."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class MediaFacts:
    content_type: str
    width: int | None = None
    height: int | None = None
    duration_s: float | None = None


def inspect_media(data: bytes, category: str) -> MediaFacts:
    """The facts of `data` if it is a valid file of `category` (image, video, audio);
    NotMedia otherwise."""
    if not data:
        raise NotMedia("the file is empty")
    if category == "image":
        return _inspect_image(data)
    if category in ("video", "audio"):
        return _inspect_stream(data, category)
    raise NotMedia(f"no media kind {category!r}")


def _inspect_image(data: bytes) -> MediaFacts:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=tuple(IMAGE_TYPES)) as image:
            fmt = str(image.format)
            width, height = image.size
            if fmt in _VERIFIABLE:
                image.verify()  # every chunk's checksum, through the end marker
            else:
                if fmt == "JPEG":  # decoding at 1/8 scale still reads every scan
                    image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
                image.load()
    except Exception:
        raise NotMedia(
            "not a complete PNG, JPEG, WebP, GIF or AVIF image (identified by its bytes)"
        ) from None
    return MediaFacts(IMAGE_TYPES[fmt], width, height)


@dataclass(frozen=True, slots=True)
class _Container:
    demuxer: str  # PyAV/FFmpeg input format
    video_type: str | None  # content type when it carries a video stream
    audio_type: str | None  # content type when it carries only audio


def _container(data: bytes) -> _Container | None:
    """The container the leading bytes announce, or None for anything else."""
    head = data[:64]
    if head[4:8] == b"ftyp":
        quicktime = head[8:12] == b"qt  "
        return _Container("mov", "video/quicktime" if quicktime else "video/mp4", "audio/mp4")
    if head[:4] == b"\x1a\x45\xdf\xa3":
        if b"webm" in head:
            return _Container("matroska", "video/webm", "audio/webm")
        return _Container("matroska", "video/x-matroska", "audio/x-matroska")
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return _Container("wav", None, "audio/wav")
    if head[:4] == b"OggS":
        return _Container("ogg", "video/ogg", "audio/ogg")
    if head[:4] == b"fLaC":
        return _Container("flac", None, "audio/flac")
    if head[:3] == b"ID3":
        return _Container("mp3", None, "audio/mpeg")
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        # MPEG audio frame sync: layer bits 00 are AAC in ADTS, anything else MP3.
        if head[1] & 0x06 == 0:
            return _Container("aac", None, "audio/aac")
        return _Container("mp3", None, "audio/mpeg")
    return None


def _inspect_stream(data: bytes, category: str) -> MediaFacts:
    import av

    container = _container(data)
    if container is None:
        raise NotMedia(f"not a {category} file (no known container signature)")
    try:
        with av.open(io.BytesIO(data), mode="r", format=container.demuxer) as media:
            pictures = av.stream.Disposition.attached_pic
            videos = [s for s in media.streams.video if not s.disposition & pictures]
            audios = list(media.streams.audio)
            if category == "video" and not videos:
                raise NotMedia("a file without a video stream")
            if category == "audio" and (videos or not audios):
                raise NotMedia("not an audio-only file")
            stream = videos[0] if category == "video" else audios[0]
            if next(iter(media.decode(stream)), None) is None:
                raise NotMedia(f"no {category} frame could be decoded")
            duration = media.duration / 1_000_000 if media.duration is not None else None
            if duration is None and stream.duration is not None and stream.time_base:
                duration = float(stream.duration * stream.time_base)
            size = (
                (videos[0].codec_context.width, videos[0].codec_context.height) if videos else None
            )
    except NotMedia:
        raise
    except Exception:
        raise NotMedia(f"not a readable {category} file") from None
    content_type = container.video_type if category == "video" else container.audio_type
    if content_type is None:
        raise NotMedia(f"not a {category} container")
    return MediaFacts(
        content_type,
        width=size[0] if size else None,
        height=size[1] if size else None,
        duration_s=duration,
    )


def with_detected_facts(output: OutputFile, facts: MediaFacts) -> OutputFile:
    """The output as stored: our content type and the file's own facts, the provider's
    only where the file says nothing."""
    return replace(
        output,
        content_type=facts.content_type,
        width=facts.width if facts.width is not None else output.width,
        height=facts.height if facts.height is not None else output.height,
        duration_s=facts.duration_s if facts.duration_s is not None else output.duration_s,
    )


def probe(output: OutputFile) -> OutputFile:
    """Fill missing width/height/duration from the file itself; never raises."""
    kind = output.content_type.split("/", 1)[0]
    if kind == "image" and (output.width is None or output.height is None):
        try:
            from PIL import Image

            with Image.open(io.BytesIO(output.data)) as image:
                width, height = image.size
            return replace(output, width=width, height=height)
        except Exception:
            return output
    if kind in ("video", "audio") and (
        output.duration_s is None or (kind == "video" and output.width is None)
    ):
        try:
            import av

            with av.open(io.BytesIO(output.data), mode="r") as container:
                duration = (
                    container.duration / 1_000_000 if container.duration is not None else None
                )
                frame_size: tuple[int, int] | None = None
                if container.streams.video:
                    context = container.streams.video[0].codec_context
                    frame_size = (context.width, context.height)
            return replace(
                output,
                duration_s=output.duration_s if output.duration_s is not None else duration,
                width=output.width if output.width is not None or not frame_size else frame_size[0],
                height=output.height
                if output.height is not None or not frame_size
                else frame_size[1],
            )
        except Exception:
            return output
    return output


def sniff_image_type(data: bytes) -> str | None:
    """The media type of PNG, JPEG, WebP or GIF bytes, from their signature."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return None
