"""The `local` provider: renders on this machine with the procedural renderer.

Renders run in a process pool so the event loop (and the API sharing it) stays
responsive. There is no upstream job to resume: a retried attempt renders again, which is
safe because the output is deterministic. Cancellation reaches the render process through
a flag file the renderer checks between frames; progress (frames done / total, images
done / requested) comes back through a small file the render process rewrites and `poll`
reads every PROGRESS_READ_S, handing it to `request.on_progress`.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import secrets
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vivix.providers.base import (
    OutputFile,
    ProviderRejectedError,
    ProviderRetriableError,
    RenderCanceled,
    RenderRequest,
    RenderResult,
    UpstreamHandle,
)
from vivix.renderer import render

PROGRESS_READ_S = 0.5
IMAGE_TYPES = {"png": "image/png", "jpeg": "image/jpeg"}
AUDIO_TYPES = {"mp3": "audio/mpeg", "wav": "audio/wav"}


@dataclass(frozen=True, slots=True)
class StopFlag:
    """Picklable `should_stop` for a render in another process."""

    path: str

    def __call__(self) -> bool:
        return os.path.exists(self.path)

    def raise_(self) -> None:
        with open(self.path, "w"):
            pass

    def clear(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


@dataclass(frozen=True, slots=True)
class ProgressFile:
    """Picklable `on_progress` for a render in another process: the last fraction, written
    whole (rename) so the reader never sees half a number."""

    path: str

    def __call__(self, fraction: float) -> None:
        partial = f"{self.path}.tmp"
        with open(partial, "w") as out:
            out.write(repr(float(fraction)))
        os.replace(partial, self.path)

    def read(self) -> float | None:
        try:
            with open(self.path) as source:
                return float(source.read())
        except (FileNotFoundError, ValueError):
            return None

    def clear(self) -> None:
        for path in (self.path, f"{self.path}.tmp"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def render_outputs(
    category: str,
    params: dict[str, Any],
    should_stop: StopFlag,
    on_progress: ProgressFile | None = None,
) -> list[OutputFile]:
    """Runs in a pool process: render every requested result."""
    prompt = str(params["prompt"])
    seed = int(params.get("seed", 0))
    negative = params.get("negative_prompt")
    if category == "image":
        aspect = str(params.get("aspect_ratio", "1:1"))
        width, height = render.image_size(aspect, str(params.get("resolution", "1K")))
        fmt = str(params.get("output_format", "png"))
        outputs = []
        count = int(params.get("number_results", 1))
        for variation in range(count):
            if should_stop():
                raise RenderCanceled()
            if on_progress is not None and variation:
                on_progress(variation / count)
            data = render.render_image(
                prompt,
                width=width,
                height=height,
                seed=seed,
                variation=variation,
                fmt=fmt,
                negative_prompt=negative,
            )
            outputs.append(OutputFile(data, IMAGE_TYPES[fmt], width=width, height=height))
        return outputs
    if category == "video":
        width, height = render.video_size(
            str(params.get("aspect_ratio", "16:9")), str(params.get("resolution", "720p"))
        )
        duration = int(params.get("duration", 5))
        data = render.render_video(
            prompt,
            width=width,
            height=height,
            duration_s=duration,
            seed=seed,
            audio=bool(params.get("audio", False)),
            negative_prompt=negative,
            should_stop=should_stop,
            on_progress=on_progress,
        )
        return [
            OutputFile(data, "video/mp4", width=width, height=height, duration_s=float(duration))
        ]
    if category == "audio":
        duration = int(params.get("duration", 5))
        fmt = str(params.get("output_format", "mp3"))
        data = render.render_audio(
            prompt, duration_s=duration, seed=seed, fmt=fmt, should_stop=should_stop
        )
        return [OutputFile(data, AUDIO_TYPES[fmt], duration_s=float(duration))]
    raise ValueError(f"unknown category {category!r}")


class LocalAdapter:
    name = "local"

    def __init__(self, scratch_dir: Path, processes: int = 0) -> None:
        self._scratch = scratch_dir
        self._processes = processes or os.cpu_count() or 1
        self._pool: ProcessPoolExecutor | None = None
        self._renders: set[Future[list[OutputFile]]] = set()

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._scratch.mkdir(parents=True, exist_ok=True)
            # forkserver: children don't inherit the event loop's threads and sockets.
            self._pool = ProcessPoolExecutor(
                max_workers=self._processes, mp_context=multiprocessing.get_context("forkserver")
            )
        return self._pool

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        if self._pool is pool:
            self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)

    async def submit(self, request: RenderRequest) -> UpstreamHandle:
        return {"local": True}

    async def find(self, request: RenderRequest) -> UpstreamHandle | None:
        # Nothing upstream to pay for: rendering again is the resume (deterministic).
        return {"local": True}

    @property
    def active_renders(self) -> int:
        """Renders submitted to the pool and not yet ended (queued or running)."""
        return len(self._renders)

    async def poll(self, handle: UpstreamHandle, request: RenderRequest) -> RenderResult:
        name = f"{request.generation_id}-{secrets.token_hex(6)}"
        flag = StopFlag(str(self._scratch / f"stop-{name}"))
        progress = ProgressFile(str(self._scratch / f"progress-{name}"))
        job = (request.category, request.params, flag, progress)
        pool = self._executor()
        try:
            render_job = pool.submit(render_outputs, *job)
        except BrokenProcessPool:
            self._discard(pool)
            pool = self._executor()
            render_job = pool.submit(render_outputs, *job)
        self._renders.add(render_job)
        render_job.add_done_callback(self._renders.discard)
        waiter = asyncio.wrap_future(render_job)
        try:
            outputs = await _with_progress(waiter, progress, request)
        except asyncio.CancelledError:
            # Not started yet: drop it from the pool queue. Running: raise the flag and wait
            # until the render process has noticed it, so the slot is free when we return.
            if not render_job.cancel():
                flag.raise_()
                await _wait_out(waiter)
            raise
        except RenderCanceled:
            raise ProviderRejectedError("render canceled") from None
        except BrokenProcessPool:
            # A render process died (killed, out of memory): the pool is unusable from now
            # on, so start a new one and let the worker render again after its backoff.
            self._discard(pool)
            raise ProviderRetriableError("a render process died", resubmit=True) from None
        except ValueError as exc:
            raise ProviderRejectedError(f"local renderer refused the params: {exc}") from None
        finally:
            # Only once the render has ended: clearing the flag earlier would let it run on.
            if render_job.done():
                flag.clear()
                progress.clear()
        return RenderResult(outputs)

    async def cancel(self, handle: UpstreamHandle) -> None:
        return None  # the running poll() is canceled by the worker, which stops the render

    async def aclose(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


async def _with_progress(
    waiter: asyncio.Future[list[OutputFile]], progress: ProgressFile, request: RenderRequest
) -> list[OutputFile]:
    """The render's outputs; meanwhile its progress file is read and reported. Waiting
    does not cancel the render when our task is canceled (the caller stops it)."""
    reported: float | None = None
    while True:
        done, _ = await asyncio.wait({waiter}, timeout=PROGRESS_READ_S)
        if done:
            return waiter.result()
        fraction = progress.read()
        if fraction is not None and fraction != reported:
            reported = fraction
            await request.on_progress(fraction)


async def _wait_out(waiter: asyncio.Future[list[OutputFile]]) -> None:
    """Wait for a render to end even if our task is canceled again meanwhile (the client's
    cancel, its NOTIFY and the heartbeat may each cancel the job): leaving early would free
    the worker's slot while the render process is still busy."""
    while not waiter.done():
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.shield(waiter)
    if not waiter.cancelled():
        waiter.exception()  # retrieved: its outcome no longer matters
