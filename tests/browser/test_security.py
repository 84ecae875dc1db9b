"""The Studio's defences as a real browser meets them (tests/studio checks the same rules
over HTTP): a page on another origin cannot make a signed-in person's browser change
anything, the session cookie is out of reach of scripts, and the CSP stops injected
inline script."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.browser.conftest import Pages, Studio

ATTACKS = {
    # A form that posts to the Studio and submits itself: with no token, and a made-up one.
    "/no-token": "",
    "/forged-token": '<input name="csrf_token" value="forged-by-the-attacker">',
}


@pytest.fixture
def attacker(studio: Studio) -> Iterator[str]:
    """Another origin (same host, another port: the same *site*, so SameSite=Lax still
    sends the session cookie; only the CSRF check stands in the way)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            extra = ATTACKS.get(self.path.split("?")[0], "")
            body = (
                "<!doctype html><title>Win a prize</title>"
                f'<form id="f" method="post" action="{studio.base_url}/generate">'
                '<input name="model" value="vivix-local-image">'
                '<input name="prompt" value="paid for by someone else">'
                f"{extra}</form>"
                "<script>document.getElementById('f').submit()</script>"
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_a_page_on_another_origin_cannot_spend_a_signed_in_persons_credits(
    pages: Pages, studio: Studio, attacker: str, attack: str
) -> None:
    user = studio.user(credits=100)
    page = pages.signed_in(user)
    pages.also_allowed.add(attacker)  # the one foreign origin here is the test's own
    with page.expect_response(f"{studio.base_url}/generate") as answer:
        page.goto(attacker + attack)
    assert answer.value.status == 403
    page.get_by_text("did not come from this site").wait_for()
    shown = studio.account(user.account)
    assert (shown["balance"], shown["held"], shown["active_jobs"]) == (100, 0, 0)
    page.goto("/history")
    assert page.locator("#gallery .tile").count() == 0


def test_the_session_cookie_is_http_only_same_site_and_invisible_to_scripts(
    pages: Pages, studio: Studio
) -> None:
    page = pages.signed_in(studio.user())
    (session,) = [c for c in page.context.cookies() if c["name"] == "vivix_session"]
    assert session["httpOnly"] is True
    assert session["sameSite"] == "Lax"
    assert session["secure"] is False  # plain http here; https public URLs get Secure
    assert "vivix_session" not in page.evaluate("document.cookie")


def test_the_csp_stops_script_injected_into_a_page(pages: Pages, studio: Studio) -> None:
    page = pages.signed_in(studio.user())
    violations = page.evaluate(
        """() => new Promise((resolve) => {
          const seen = [];
          document.addEventListener("securitypolicyviolation", (e) => {
            seen.push(e.violatedDirective);
            if (seen.length === 2) resolve(seen);
          });
          const script = document.createElement("script");
          script.textContent = "window.__injected = 'script'";
          document.body.appendChild(script);
          const div = document.createElement("div");
          div.innerHTML = '<img src="/static/favicon.svg" onload="window.__injected = \\'handler\\'">';
          document.body.appendChild(div);
          setTimeout(() => resolve(seen), 3000);
        })"""
    )
    assert sorted(violations) == ["script-src-attr", "script-src-elem"], violations
    assert page.evaluate("window.__injected") is None
    # The page's own scripts (htmx, studio.js) do run.
    assert page.evaluate("typeof window.htmx") == "object"
