"""Times the local renderer: still images at 1K/2K/4K and 5-second videos at 720p/1080p.

Run from the project root: `python -m bench.bench_render`. Prints a table, then one JSON
object on the last line. Seconds are medians of wall time; CPU seconds (all threads, x264
included) are reported too because wall time on a shared machine says little. Video also
reports frames rendered per second of wall time.
"""

from __future__ import annotations

import json
import resource
import statistics
import time
from collections.abc import Callable
from functools import partial

from vivix.renderer import render

PROMPT = "neon city at night, rain on the harbour"
IMAGE_RUNS = {"1K": 5, "2K": 3, "4K": 2}
VIDEO_RUNS = {"720p": 2, "1080p": 1}
VIDEO_SECONDS = 5
FPS = 24


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _median_seconds(runs: int, work: Callable[[], bytes]) -> tuple[float, float, int]:
    """Median wall seconds, median CPU seconds and the output size of `runs` calls."""
    walls, cpus, size = [], [], 0
    for _ in range(runs):
        cpu, started = _cpu_seconds(), time.perf_counter()
        size = len(work())
        walls.append(time.perf_counter() - started)
        cpus.append(_cpu_seconds() - cpu)
    return statistics.median(walls), statistics.median(cpus), size


def main() -> None:
    results: list[dict[str, object]] = []
    for resolution, runs in IMAGE_RUNS.items():
        width, height = render.image_size("16:9", resolution)
        seconds, cpu_seconds, size = _median_seconds(
            runs, partial(render.render_image, PROMPT, width=width, height=height, seed=1)
        )
        results.append(
            {
                "kind": "image",
                "resolution": resolution,
                "size": f"{width}x{height}",
                "seconds": round(seconds, 3),
                "cpu_seconds": round(cpu_seconds, 3),
                "bytes": size,
                "runs": runs,
            }
        )
    for resolution, runs in VIDEO_RUNS.items():
        width, height = render.video_size("16:9", resolution)
        seconds, cpu_seconds, size = _median_seconds(
            runs,
            partial(
                render.render_video,
                PROMPT,
                width=width,
                height=height,
                duration_s=VIDEO_SECONDS,
                seed=1,
                audio=True,
            ),
        )
        results.append(
            {
                "kind": "video",
                "resolution": resolution,
                "size": f"{width}x{height}",
                "seconds": round(seconds, 3),
                "cpu_seconds": round(cpu_seconds, 3),
                "bytes": size,
                "runs": runs,
                "frames_per_second": round(VIDEO_SECONDS * FPS / seconds, 1),
            }
        )

    header = f"{'kind':<6} {'resolution':<10} {'size':<10} {'seconds':>8} {'cpu s':>8} {'fps':>6}"
    print(f"{header} {'bytes':>10}")
    for row in results:
        fps = row.get("frames_per_second", "")
        print(
            f"{row['kind']:<6} {row['resolution']:<10} {row['size']:<10} "
            f"{row['seconds']:>8} {row['cpu_seconds']:>8} {fps!s:>6} {row['bytes']:>10}"
        )
    print(json.dumps({"benchmark": "local_render", "prompt": PROMPT, "results": results}))


if __name__ == "__main__":
    main()
