"""The live card's markup: while its generation runs it names the generation for the
event stream (studio.js) and keeps htmx's 1 s poll as the fallback; once final it is
plain. The stream itself is driven in a real browser (tests/browser/test_live_stream.py)."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta

import httpx

from tests.studio.helpers import signed_in, studio_user
from tests.worker.conftest import local_registry
from vivix.generations.eta import RunTimes
from vivix.kit.clock import parse_iso, utcnow
from vivix.providers.registry import ProviderRegistry
from vivix.runtime import Runtime
from vivix.worker.runner import Worker

__all__ = ["local_registry"]

FORM = {"model": "vivix-local-image", "prompt": "a lighthouse in fog", "number_results": "1"}


async def test_a_running_card_is_marked_live_and_reads_itself_again_on_a_change(
    runtime: Runtime, browser: httpx.AsyncClient
) -> None:
    user = await studio_user(runtime)
    csrf = await signed_in(browser, user)
    submitted = await browser.post(
        "/generate", data=FORM, headers={"HX-Request": "true", "X-CSRF-Token": csrf}
    )
    found = re.search(r'data-generation-id="([0-9a-f-]{36})"', submitted.text)
    assert found is not None
    generation_id = found.group(1)
    live = (await browser.get(f"/history/{generation_id}/card")).text
    assert f'data-live-generation="{generation_id}"' in live
    # studio.js fires vivix:changed (stream or polling); a change seen mid-read re-reads.
    assert 'hx-trigger="vivix:changed" hx-sync="this:replace"' in live
    page = (await browser.get("/generate")).text
    assert page.count(f'data-live-generation="{generation_id}"') == 1
    await browser.post(f"/history/{generation_id}/cancel", data={"csrf_token": csrf})
    done = (await browser.get(f"/history/{generation_id}/card")).text
    assert 'data-status="canceled"' in done
    assert "data-live-generation" not in done
    assert "hx-trigger" not in done


async def test_a_running_tile_in_the_gallery_is_live_and_only_its_owner_can_read_it(
    runtime: Runtime, browser: httpx.AsyncClient, other_browser: httpx.AsyncClient
) -> None:
    user = await studio_user(runtime)
    csrf = await signed_in(browser, user)
    submitted = await browser.post("/generate", data={**FORM, "csrf_token": csrf})
    generation_id = submitted.headers["location"].rsplit("/", 1)[1]
    gallery = (await browser.get("/history")).text
    assert f'data-live-generation="{generation_id}"' in gallery
    assert f'hx-get="/history/{generation_id}/tile"' in gallery
    tile = await browser.get(f"/history/{generation_id}/tile")
    assert tile.status_code == 200
    assert tile.text.startswith('<a class="tile"')
    assert f'data-live-generation="{generation_id}"' in tile.text
    stranger = await studio_user(runtime)
    await signed_in(other_browser, stranger)
    assert (await other_browser.get(f"/history/{generation_id}/tile")).status_code == 404
    await browser.post(f"/history/{generation_id}/cancel", data={"csrf_token": csrf})
    done = (await browser.get(f"/history/{generation_id}/tile")).text
    assert 'data-status="canceled"' in done
    assert "data-live-generation" not in done


async def test_a_queued_card_shows_the_time_left_from_the_same_estimate_as_the_api(
    runtime: Runtime, browser: httpx.AsyncClient, local_registry: ProviderRegistry
) -> None:
    # Reads after this process ends a generation see it at once (not after 1 s).
    runtime.run_times = RunTimes(settle_s=0.0)
    user = await studio_user(runtime, concurrent_jobs=5)
    csrf = await signed_in(browser, user)
    first = await browser.post("/generate", data={**FORM, "csrf_token": csrf})
    first_id = first.headers["location"].rsplit("/", 1)[1]
    worker = Worker(runtime, concurrency=1, registry=local_registry)
    await worker.start()
    try:
        for _ in range(600):
            card = (await browser.get(f"/history/{first_id}/card")).text
            if 'data-status="completed"' in card:
                break
            await asyncio.sleep(0.05)
    finally:
        await worker.stop(grace_s=0)
    assert 'data-status="completed"' in card
    runtime.run_times.ended()  # this process ended one: read the history again
    second = await browser.post("/generate", data={**FORM, "csrf_token": csrf})
    second_id = second.headers["location"].rsplit("/", 1)[1]
    live = (await browser.get(f"/history/{second_id}/card")).text
    eta = re.search(r'<span data-eta data-eta-until="([^"]+)"> · about (\d+) s left</span>', live)
    assert eta is not None, live
    # A moment from now (the attribute is in whole seconds).
    until = parse_iso(eta.group(1)) - utcnow()
    assert timedelta(seconds=-1) < until < timedelta(hours=1)
