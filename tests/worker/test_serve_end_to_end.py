"""The README's first steps, as a user takes them: `vivix serve` (what `make serve` runs) on
a fresh data directory, embedded SQLite, the printed demo key, real HTTP; image, video and
audio jobs complete, every output downloads without auth and decodes to what was asked."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import httpx
import pytest
from PIL import Image

from tests.processes import free_port, server_env

pytestmark = pytest.mark.slow

DEMO_KEY = re.compile(r"vvx_live_[A-Za-z0-9]+")
START_TIMEOUT_S = 60.0
FINISH_TIMEOUT_S = 240.0


class Served:
    def __init__(self, base_url: str, key: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=30.0)
        self.headers = {"Authorization": f"Bearer {key}"}

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        response = self.http.post("/api/v1/generate", json=body, headers=self.headers)
        assert response.status_code == 201, response.text
        submitted: dict[str, Any] = response.json()
        return submitted

    def wait(self, generation_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + FINISH_TIMEOUT_S
        delay = 0.1
        while True:
            response = self.http.get(f"/api/v1/generations/{generation_id}", headers=self.headers)
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            if body["status"] not in ("pending", "processing"):
                return body
            assert time.monotonic() < deadline, f"still {body['status']}: {body}"
            time.sleep(delay)
            delay = min(1.0, delay * 1.5)

    def download(self, url: str) -> httpx.Response:
        response = httpx.get(url, timeout=30.0)  # a plain GET: no Authorization header
        assert response.status_code == 200, url
        assert int(response.headers["content-length"]) == len(response.content)
        return response

    def credits(self) -> dict[str, Any]:
        body: dict[str, Any] = self.http.get("/api/v1/credits", headers=self.headers).json()
        return body


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    port = free_port()
    log_path = tmp_path / "serve.log"
    env = server_env(DATA_DIR=str(tmp_path / "data"), PORT=str(port), LOG_LEVEL="info")
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "vivix", "serve"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert process.poll() is None, log_path.read_text()
            try:
                if httpx.get(f"{base_url}/readyz", timeout=2.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        key = DEMO_KEY.search(log_path.read_text())
        assert key is not None, f"no demo key printed:\n{log_path.read_text()}"
        client = Served(base_url, key.group())
        yield client
        client.http.close()
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _streams(data: bytes) -> dict[str, Any]:
    """What PyAV decodes: per stream kind, (codec, width, height, decoded seconds)."""
    found: dict[str, Any] = {}
    with av.open(io.BytesIO(data)) as container:
        for stream in container.streams.video:
            frames = sum(1 for _ in container.decode(stream))
            seconds = frames / float(stream.average_rate or 1)
            found["video"] = (stream.codec_context.name, stream.width, stream.height, seconds)
    with av.open(io.BytesIO(data)) as container:
        for stream in container.streams.audio:
            samples = sum(frame.samples for frame in container.decode(stream))
            found["audio"] = (stream.codec_context.name, None, None, samples / stream.rate)
    return found


def test_readme_walkthrough_image_video_and_audio_complete_download_and_decode(
    served: Served,
) -> None:
    start = served.credits()
    assert (start["balance"], start["held"]) == (15000, 0)  # the demo account

    image = served.submit(
        {
            "model": "vivix-local-image",
            "prompt": "a misty forest at dawn, cinematic 24mm",
            "aspect_ratio": "16:9",
            "resolution": "2K",
            "number_results": 4,
        }
    )
    video = served.submit(
        {
            "model": "vivix-local-video",
            "prompt": "waves on a rocky shore at sunset",
            "duration": 5,
            "resolution": "720p",
            "audio": True,
        }
    )
    audio = served.submit({"model": "vivix-local-audio", "prompt": "calm piano", "duration": 5})
    estimates = sum(job["credits_estimate"] for job in (image, video, audio))

    image_done = served.wait(image["generation_id"])
    assert image_done["status"] == "completed", image_done
    assert len(image_done["output_urls"]) == 4
    pictures = []
    for url in image_done["output_urls"]:
        response = served.download(url)
        assert response.headers["content-type"] == "image/png"
        picture = Image.open(io.BytesIO(response.content))
        picture.load()
        assert (picture.format, picture.size) == ("PNG", (2048, 1152))
        pictures.append(response.content)
    assert len(set(pictures)) == 4

    video_done = served.wait(video["generation_id"])
    assert video_done["status"] == "completed", video_done
    response = served.download(video_done["output_url"])
    assert response.headers["content-type"] == "video/mp4"
    streams = _streams(response.content)
    assert streams["video"][:3] == ("h264", 1280, 720)
    assert streams["video"][3] == pytest.approx(5.0, abs=1 / 24)
    assert streams["audio"][0] == "aac"
    assert streams["audio"][3] == pytest.approx(5.0, abs=0.05)  # AAC pads its last frame

    audio_done = served.wait(audio["generation_id"])
    assert audio_done["status"] == "completed", audio_done
    response = served.download(audio_done["output_url"])
    assert response.headers["content-type"] == "audio/mpeg"
    assert _streams(response.content)["audio"][3] == pytest.approx(5.0, abs=0.05)

    charged = sum(job["credits_used"] for job in (image_done, video_done, audio_done))
    assert 0 < charged <= estimates
    end = served.credits()
    assert (end["balance"], end["held"], end["spent_this_cycle"]) == (15000 - charged, 0, charged)
