"""Live cards in a real browser: while a generation runs its card follows the account's
event stream (one EventSource, no polling while it is open, progress moved in place) and turns into the result; when the stream is refused the card polls instead and
still gets there."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import httpx
from playwright.sync_api import Error as PlaywrightError

from tests.browser.conftest import Pages, Studio, until

# The local renderer takes several seconds for this: long enough to see the card live.
VIDEO = {"model": "vivix-local-video", "prompt": "waves at night", "resolution": "720p"}
IMAGE = {"model": "vivix-local-image", "prompt": "a lighthouse in fog"}


def _submit(studio: Studio, account: str, body: dict[str, Any]) -> str:
    key = studio.api_key(account)
    with httpx.Client(base_url=studio.base_url, timeout=30) as api:
        made = api.post("/api/v1/generate", json=body, headers={"Authorization": f"Bearer {key}"})
        assert made.status_code == 201, made.text
        generation_id: str = made.json()["generation_id"]
        return generation_id


def _card_requests(requests: list[str], generation_id: str) -> int:
    return sum(1 for url in requests if url.endswith(f"/history/{generation_id}/card"))


def test_a_running_card_follows_the_event_stream_instead_of_polling(
    pages: Pages, studio: Studio
) -> None:
    user = studio.user(tier="pro")
    page = pages.signed_in(user)
    streams: list[str] = []
    page.on(
        "request",
        lambda request: (
            streams.append(request.url) if request.resource_type == "eventsource" else None
        ),
    )
    generation_id = _submit(studio, user.account, VIDEO)
    page.goto("/generate")
    card = f"#run-{generation_id}"
    # While it runs, the stream drives the card: no polling.
    page.wait_for_selector(f"{card}[data-live-generation]")
    page.wait_for_selector("html[data-live=stream]")
    assert streams == [f"{studio.base_url}/api/v1/events"]
    polled_from = len(pages.requests)
    started = time.monotonic()
    page.wait_for_selector(f"{card}[data-status=completed]", timeout=120_000)
    # One safety read every 30 s while the stream is open, should a change go unseen.
    safety_reads = int((time.monotonic() - started) // 30)
    page.locator(f"{card} video").wait_for()
    # A poll every second for the seconds it ran would be many more requests than the
    # status changes the stream reported (processing, completed) and the one read when
    # the stream opened.
    assert _card_requests(pages.requests[polled_from:], generation_id) <= 3 + safety_reads
    assert streams == [f"{studio.base_url}/api/v1/events"]  # one stream, opened once
    # Nothing left running on the page: the stream is closed.
    until(lambda: page.evaluate("document.querySelectorAll('[data-live-generation]').length") == 0)


def test_when_the_stream_is_refused_the_card_polls_and_still_finishes(
    pages: Pages, studio: Studio
) -> None:
    user = studio.user(tier="pro")
    page = pages.signed_in(user)
    page.route("**/api/v1/events", lambda route: route.fulfill(status=503, body="down"))
    generation_id = _submit(studio, user.account, VIDEO)
    page.goto("/generate")
    card = f"#run-{generation_id}"
    page.wait_for_selector(f"{card}[data-live-generation]")
    page.wait_for_selector(f"{card}[data-status=completed]", timeout=120_000)
    assert page.evaluate("document.documentElement.dataset.live") == "poll"
    assert _card_requests(pages.requests, generation_id) >= 2  # it polled


def test_a_running_tile_in_history_turns_into_its_result_without_a_reload(
    pages: Pages, studio: Studio
) -> None:
    user = studio.user(tier="pro")
    page = pages.signed_in(user)
    generation_id = _submit(studio, user.account, VIDEO)
    page.goto("/history")
    page.evaluate("window.__sameDocument = true")
    tile = f"a.tile[data-generation-id='{generation_id}']"
    page.wait_for_selector(f"{tile}[data-live-generation]")
    page.wait_for_selector("html[data-live=stream]")
    page.wait_for_selector(f"{tile}[data-status=completed] video", timeout=120_000)
    assert page.evaluate("window.__sameDocument === true")


# Records the status of every change the page's stream delivers, before studio.js sees it.
RECORD_STREAM = """
window.__streamed = [];
const NativeEventSource = window.EventSource;
window.EventSource = class extends NativeEventSource {
  constructor(url, init) {
    super(url, init);
    this.addEventListener("generation", (event) => {
      window.__streamed.push(JSON.parse(event.data));
    });
  }
};
"""


def test_a_read_overtaken_by_the_completion_does_not_leave_the_card_stuck(
    pages: Pages, studio: Studio
) -> None:
    """A read of the card is in flight, rendered while the generation ran, when its
    completion arrives on the stream. Whatever order the answers come in, the card ends
    showing the result (this race once left cards at 'processing' for good)."""
    user = studio.user(tier="pro")
    page = pages.signed_in(user)
    page.add_init_script(RECORD_STREAM)
    held: list[tuple[Any, Any]] = []

    def hold_the_first_stale_read(route: Any) -> None:
        try:
            answer = route.fetch()
            stale = 'data-status="completed"' not in answer.text()
            if held or not stale:
                route.fulfill(response=answer)
            else:
                held.append((route, answer))  # answered below, after the completion went by
        except PlaywrightError:
            pass  # the page is gone (the test is over): nobody waits for this read

    generation_id = _submit(studio, user.account, VIDEO)
    page.route(f"**/history/{generation_id}/card", hold_the_first_stale_read)
    page.goto("/generate")
    card = f"#run-{generation_id}"
    page.wait_for_selector(f"{card}[data-live-generation]")
    # Route handlers run only inside Playwright calls (sync API): wait in one, not in sleep.
    for _ in range(600):
        if held:
            break
        page.wait_for_timeout(100)
    assert held, "no read of the running card was seen"
    page.wait_for_function(
        "id => window.__streamed.some(g => g.generation_id === id && g.status === 'completed')",
        arg=generation_id,
        timeout=120_000,
    )
    route, stale = held[0]
    with contextlib.suppress(Exception):  # the page may have given up on it already
        route.fulfill(response=stale)
    page.wait_for_selector(f"{card}[data-status=completed]", timeout=30_000)
    # No handler may outlive the test: one running while its page closes would raise
    # in whatever Playwright call the next test makes.
    page.unroute_all(behavior="ignoreErrors")
