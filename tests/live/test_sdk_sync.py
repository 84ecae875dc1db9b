"""The synchronous SDK against a real `vivix serve`: run() with progress, download of real
images, paging, reattaching, cancel, catalog and wallet."""

from __future__ import annotations

import uuid
from pathlib import Path

from PIL import Image

from tests.live.conftest import LiveServer
from tests.live.sdk import RecordingTransport
from vivix_client import Generation, Vivix


def client_for(live_server: LiveServer, key: str, **options: object) -> Vivix:
    return Vivix(key, base_url=live_server.base_url, transport=RecordingTransport(), **options)  # type: ignore[arg-type]


def test_run_reports_progress_and_download_decodes_the_images(
    live_server: LiveServer, tmp_path: Path
) -> None:
    account = live_server.account()
    seen: list[Generation] = []
    with client_for(live_server, account.key) as client:
        generation = client.run(
            "vivix-local-image",
            "a misty forest at dawn",
            aspect_ratio="16:9",
            resolution="1K",
            number_results=2,
            metadata={"suite": "sdk-sync"},
            on_progress=seen.append,
        )
        assert generation.status == "completed"
        assert generation.credits_used is not None
        assert 0 < generation.credits_used <= (generation.credits_estimate or 0)
        assert [g.status for g in seen][-1] == "completed"
        assert seen[0].status in ("pending", "processing", "completed")
        order = ["pending", "processing", "completed"]
        assert [order.index(g.status) for g in seen] == sorted(order.index(g.status) for g in seen)
        paths = client.download(generation, tmp_path / "out")
        assert len(paths) == 2
        for path, output in zip(paths, generation.outputs, strict=True):
            assert path.name.startswith(generation.generation_id)
            with Image.open(path) as image:
                image.load()
                assert image.size == (output.width, output.height)
                assert image.size[0] > image.size[1]  # 16:9
        credits = client.credits()
        assert credits.balance == 15000 - generation.credits_used
        assert credits.held == 0
        assert live_server.ledger_sum(account.name) == credits.balance


def test_list_pages_through_everything_newest_first_and_filters(live_server: LiveServer) -> None:
    account = live_server.account(test_key=True, concurrent_jobs=20)
    tag = uuid.uuid4().hex
    with client_for(live_server, account.key) as client:
        submitted = [
            client.generate("vivix-local-audio", f"chime {i}", metadata={"batch": tag}).id
            for i in range(5)
        ]
        client.generate("vivix-local-audio", "other", metadata={"batch": "else"})
        listed = [g.id for g in client.list(metadata={"batch": tag}, page_size=2)]
        assert listed == list(reversed(submitted))
        transport = client._http._transport
        assert isinstance(transport, RecordingTransport)
        pages = [s for s in transport.sent if s.path == "/api/v1/generations"]
        assert len(pages) == 3
        assert [g.id for g in client.list(metadata={"batch": tag}, limit=3)] == listed[:3]


def test_a_second_client_reattaches_to_a_generation_by_id(live_server: LiveServer) -> None:
    account = live_server.account()
    with client_for(live_server, account.key) as first:
        submitted = first.generate("vivix-local-image", "a red kite", resolution="1K")
        assert submitted.status == "pending"
    # Another process later: only the id survived.
    with client_for(live_server, account.key) as second:
        assert second.get(submitted.id).model == "vivix-local-image"
        finished = second.wait(submitted.id, timeout=120)
        assert finished.succeeded
        assert finished.output_url


def test_cancel_refunds_the_hold(live_server: LiveServer) -> None:
    account = live_server.account(concurrent_jobs=5)
    with client_for(live_server, account.key) as client:
        # A long video: still rendering (or queued) when the cancel arrives.
        video = client.generate(
            "vivix-local-video", "waves", duration=10, resolution="1080p", audio=True
        )
        canceled = client.cancel(video.id)
        assert canceled.status == "canceled"
        assert canceled.credits_used == 0
        assert client.credits().balance == 15000
        assert client.credits().held == 0


def test_catalog_models_and_wallet_are_typed(live_server: LiveServer) -> None:
    account = live_server.account()
    with client_for(live_server, account.key) as client:
        catalog = client.catalog()
        assert catalog.tier == "pro"
        models = {m.slug: m for m in client.models()}
        assert models["vivix-local-image"].available
        assert models["gpt-image-1"].unavailable_reason == "not_configured"
        one = client.model("vivix-local-video")
        assert one.category == "video"
        assert one.credits_band.min <= one.credits_band.max
        assert "prompt" in one.params
        credits = client.credits()
        assert credits.rate_limit.calls_per_minute == 240
        assert credits.balance == catalog.credits_balance == 15000
