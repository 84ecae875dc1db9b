"""Live cards in a real browser: while a generation runs its card follows the account's
event stream (one EventSource, the card's 1 s polling switched off, progress moved in
place) and turns into the result; when the stream is refused the card polls instead and
still gets there."""

from __future__ import annotations

from typing import Any

import httpx

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
    # While it runs, the stream drives the card: no poll timer on it.
    page.wait_for_selector(f"{card}[data-live-generation][hx-trigger='vivix:changed']")
    assert streams == [f"{studio.base_url}/api/v1/events"]
    polled_from = len(pages.requests)
    page.wait_for_selector(f"{card}[data-status=completed]", timeout=120_000)
    page.locator(f"{card} video").wait_for()
    # A poll every second for the seconds it ran would be many more requests than the
    # status changes the stream reported (processing, completed) and the one read when
    # the stream opened.
    assert _card_requests(pages.requests[polled_from:], generation_id) <= 3
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
    page.wait_for_selector(f"{tile}[data-live-generation][hx-trigger='vivix:changed']")
    page.wait_for_selector(f"{tile}[data-status=completed] video", timeout=120_000)
    assert page.evaluate("window.__sameDocument === true")
