"""Reading the facts of a delivered file (size, duration) when the provider didn't say."""

from __future__ import annotations

import io
from dataclasses import replace

from vivix.providers.base import OutputFile


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
