"""Every page at a phone's width (390 px) and on a desktop: nothing scrolls sideways, and
each one is photographed into docs/screenshots/ (shown in the README), so the pictures
follow the product. Generate works with the keyboard alone."""

from __future__ import annotations

import io
import re
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.browser.conftest import DESKTOP, PHONE, SCREENSHOTS, Pages, Studio, User, until

# (file name, path): the operator sees every page, so one person shows them all.
PAGES = (
    ("generate", "/generate"),
    ("history", "/history"),
    ("history-detail", "/history/{generation}"),
    ("usage", "/usage"),
    ("settings-api", "/settings/api"),
    ("settings-account", "/settings/account"),
    ("operator-accounts", "/operator/accounts"),
    ("operator-account", "/operator/accounts/{account}"),
    ("operator-users", "/operator/users"),
    ("operator-keys", "/operator/keys"),
    ("operator-catalog", "/operator/catalog"),
    ("operator-queue", "/operator/queue"),
)
DARK = ("generate", "history", "usage")


@pytest.fixture(scope="module")
def showcase(studio: Studio) -> tuple[User, str]:
    """An operator whose account has a little of everything: finished image, audio and
    video generations, a grant, an API key."""
    user = studio.user(tier="pro", credits=2000, operator=True)
    key = studio.api_key(user.account)
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
            submitted = api.post("/api/v1/generate", json=body)
            assert submitted.status_code == 201, submitted.text
        last = submitted.json()["generation_id"]

        def done() -> bool:
            data = api.get("/api/v1/generations").json()["data"]
            return all(g["status"] == "completed" for g in data)

        until(done, 120)
    return user, last


def _no_sideways_scroll(page: Any, width: int) -> None:
    scroll_width = page.evaluate("document.scrollingElement.scrollWidth")
    assert scroll_width <= width, f"{page.url} is {scroll_width}px wide at {width}px"


def _shoot(page: Any, name: str) -> None:
    """The viewport as a 256-colour PNG: a quarter of the bytes, the UI still crisp."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.evaluate("document.fonts.ready")
    png = page.screenshot(animations="disabled", caret="hide")
    image = Image.open(io.BytesIO(png)).convert("RGB")
    small = image.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    small.save(SCREENSHOTS / f"{name}.png", optimize=True)


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_every_page_fits_the_screen_and_is_photographed(
    pages: Pages, studio: Studio, showcase: tuple[User, str], size: str
) -> None:
    user, generation = showcase
    viewport = PHONE if size == "phone" else DESKTOP
    anonymous = pages.new(viewport)
    anonymous.goto("/signin")
    _no_sideways_scroll(anonymous, viewport["width"])
    _shoot(anonymous, f"signin-{size}")
    page = pages.signed_in(user, viewport)
    for name, path in PAGES:
        response = page.goto(path.format(generation=generation, account=user.account_id))
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
    card.wait_for()
    assert "a paper boat on a pond" in card.inner_text()
    assert re.search(r"/generate$", page.url)
