"""Every page at a phone's width (390 px) and on a desktop: nothing scrolls sideways, and
each one is photographed into docs/screenshots/ (shown in the README), so the pictures
follow the product. Generate works with the keyboard alone."""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from PIL import Image, ImageChops

from tests.browser.conftest import (
    DESKTOP,
    PHONE,
    RENDER_MS,
    SCREENSHOTS,
    Pages,
    Studio,
    User,
    until,
)

# (file name, path): the operator sees every page, so one person shows them all.
PAGES = (
    ("generate", "/generate"),
    ("history", "/history"),
    ("history-detail", "/history/{generation}"),
    ("usage", "/usage"),
    ("settings-api", "/settings/api"),
    ("settings-webhook", "/settings/api/webhooks/{webhook}"),
    ("settings-webhook-delivery", "/settings/api/webhooks/{webhook}/deliveries/{delivery}"),
    ("settings-account", "/settings/account"),
    # Searched: other tests' accounts come and go, the showcase's stay the same.
    ("operator-accounts", "/operator/accounts?q=studio"),
    ("operator-account", "/operator/accounts/{account}"),
    ("operator-users", "/operator/users?q=studio"),
    ("operator-keys", "/operator/keys?q=studio"),
    ("operator-catalog", "/operator/catalog"),
    ("operator-queue", "/operator/queue"),
)
DARK = ("generate", "history", "usage")


class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def receiver() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hooks"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def showcase(studio: Studio, receiver: str) -> tuple[User, dict[str, str]]:
    """An operator whose account has a little of everything: finished image, audio and
    video generations, a grant, an API key, a webhook with a delivered test."""
    user = studio.user(
        tier="pro", credits=2000, operator=True, name="acme-studio", email="maria@acme.example"
    )
    key = studio.api_key(user.account)
    studio.user(tier="free", credits=80, name="globex-studio", email="li@globex.example")
    other = studio.user(tier="ultimate", name="initech-studio", email="sam@initech.example")
    studio.api_key(other.account)
    studio.admin.post(
        f"/admin/v1/accounts/{user.account}/credits", json={"amount": 500, "reason": "welcome"}
    )
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=studio.base_url, headers=headers, timeout=30) as api:
        bodies = (
            {"model": "vivix-local-audio", "prompt": "calm rain over a harbour", "duration": 2},
            {"model": "vivix-local-video", "prompt": "neon street at night", "duration": 1},
            {
                "model": "vivix-local-image",
                "prompt": "a misty forest at dawn",
                "aspect_ratio": "16:9",
            },
            {"model": "vivix-local-image", "prompt": "copper teapot, studio light"},
        )
        for body in bodies:
            # A fixed seed: the same pictures every run (see _shoot).
            submitted = api.post("/api/v1/generate", json={**body, "seed": 7})
            assert submitted.status_code == 201, submitted.text
        last = submitted.json()["generation_id"]

        def done() -> bool:
            data = api.get("/api/v1/generations").json()["data"]
            return all(g["status"] == "completed" for g in data)

        until(done, 120)
        hook = api.post("/api/v1/webhooks", json={"url": receiver, "description": "backend"})
        assert hook.status_code == 201, hook.text
        webhook = hook.json()["id"]
        assert api.post(f"/api/v1/webhooks/{webhook}/test").status_code in (200, 201, 202)

        def delivered() -> bool:
            data = api.get(f"/api/v1/webhooks/{webhook}/deliveries").json()["data"]
            return bool(data) and all(d["status"] == "succeeded" for d in data)

        until(delivered)
        delivery = api.get(f"/api/v1/webhooks/{webhook}/deliveries").json()["data"][0]["id"]
    ids = {"generation": last, "account": user.account_id, "webhook": webhook}
    return user, {**ids, "delivery": delivery}


def _no_sideways_scroll(page: Any, width: int) -> None:
    scroll_width = page.evaluate("document.scrollingElement.scrollWidth")
    assert scroll_width <= width, f"{page.url} is {scroll_width}px wide at {width}px"
    # Nor does a table hide a column or a button behind a scroll bar of its own.
    clipped = page.evaluate(
        "[...document.querySelectorAll('.table-wrap')]"
        ".filter((t) => t.scrollWidth > t.clientWidth + 1).map((t) => t.outerHTML.slice(0, 80))"
    )
    assert not clipped, f"{page.url} at {width}px: {clipped}"


# Fonts loaded and pictures decoded (a lazy one below the fold may never be: 5 s at most).
_PAINTED = """async () => {
  await document.fonts.ready;
  const decoded = Promise.all([...document.images].map((img) => img.decode().catch(() => null)));
  await Promise.race([decoded, new Promise((resolve) => setTimeout(resolve, 5000))]);
}"""


def _shoot(page: Any, name: str) -> None:
    """The viewport as a 256-colour PNG (a quarter of the bytes, the UI still crisp),
    written only when it differs visibly from the one in the repository: times, ids and
    port numbers change on every run, and a test run should not dirty the checkout."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.evaluate(_PAINTED)
    png = page.screenshot(animations="disabled", caret="hide")
    image = Image.open(io.BytesIO(png)).convert("RGB")
    small = image.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    path = SCREENSHOTS / f"{name}.png"
    if path.exists() and _looks_the_same(Image.open(path).convert("RGB"), small.convert("RGB")):
        return
    small.save(path, optimize=True)


def _looks_the_same(before: Image.Image, after: Image.Image) -> bool:
    if before.size != after.size:
        return False
    difference = (
        ImageChops.difference(before, after).convert("L").point(lambda v: 255 if v > 40 else 0)
    )
    changed = sum(difference.histogram()[1:])
    return changed < 0.01 * before.size[0] * before.size[1]


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_every_page_fits_the_screen_and_is_photographed(
    pages: Pages, studio: Studio, showcase: tuple[User, dict[str, str]], size: str
) -> None:
    user, ids = showcase
    viewport = PHONE if size == "phone" else DESKTOP
    anonymous = pages.new(viewport)
    anonymous.goto("/signin")
    _no_sideways_scroll(anonymous, viewport["width"])
    _shoot(anonymous, f"signin-{size}")
    page = pages.signed_in(user, viewport)
    for name, path in PAGES:
        response = page.goto(path.format(**ids))
        assert response is not None, path
        assert response.status == 200, path
        _no_sideways_scroll(page, viewport["width"])
        _shoot(page, f"{name}-{size}")
    if size == "desktop":
        dark = pages.signed_in(user, viewport, color_scheme="dark")
        for name, path in PAGES:
            if name in DARK:
                dark.goto(path)
                _shoot(dark, f"{name}-dark-{size}")


def test_generate_works_with_the_keyboard_alone(pages: Pages, studio: Studio) -> None:
    user = studio.user(credits=50)
    page = pages.new(PHONE)
    page.goto("/signin")
    page.keyboard.type(user.email)  # the email field has the focus when the page opens
    page.keyboard.press("Tab")
    page.keyboard.type(user.password)
    page.keyboard.press("Enter")
    page.wait_for_url("**/generate")

    def tab_to(element_id: str) -> None:
        for _ in range(80):
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.id") == element_id:
                # Where the focus is can be seen.
                style = page.evaluate(
                    "(() => { const s = getComputedStyle(document.activeElement);"
                    " return [s.outlineStyle, s.boxShadow]; })()"
                )
                assert style[0] != "none" or style[1] != "none", element_id
                return
        raise AssertionError(f"Tab never reached #{element_id}")

    tab_to("param-prompt")
    page.keyboard.type("a paper boat on a pond")
    tab_to("generate-submit")
    page.keyboard.press("Enter")
    card = page.locator("#runs-list article.run[data-status=completed]")
    card.wait_for(timeout=RENDER_MS)
    assert "a paper boat on a pond" in card.inner_text()
    assert re.search(r"/generate$", page.url)
