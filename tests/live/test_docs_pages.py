"""`/docs` and `/redoc` work with the network cut: the pages and their assets come from
this server only (vendored Swagger UI / ReDoc), and a Content-Security-Policy forbids the
browser to fetch anything from elsewhere. Where Chromium is installed, a real headless
browser that can resolve no host but 127.0.0.1 renders every operation."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from tests.live.conftest import LiveServer
from vivix.openapi.document import openapi_document

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class _References(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "spec-url", "data-openapi-url") and value:
                self.urls.append(value)


def _csp_sources(policy: str) -> set[str]:
    return {source for directive in policy.split(";") for source in directive.split()[1:]}


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_reference_only_this_server(live_server: LiveServer, page: str) -> None:
    with httpx.Client(base_url=live_server.base_url) as http:
        response = http.get(page)
        assert response.status_code == 200
        parser = _References()
        parser.feed(response.text)
        assert parser.urls, "the page loads its UI from somewhere"
        for url in parser.urls:
            assert url.startswith("/"), url
            assert not url.startswith("//"), url
            asset = http.get(url)
            assert asset.status_code == 200, url
            if url.endswith(".css"):
                # No stylesheet pulls fonts or images from elsewhere.
                assert not re.search(r"url\(\s*['\"]?(https?:)?//", asset.text), url
                assert "@import" not in asset.text, url
        # The browser itself refuses any other origin: only 'self', data: and blob: remain.
        policy = response.headers["content-security-policy"]
        assert "default-src 'none'" in policy
        assert _csp_sources(policy) <= {"'self'", "'none'", "'unsafe-inline'", "data:", "blob:"}


def test_vendored_assets_are_the_pinned_ones() -> None:
    static = Path(__file__).parents[2] / "src" / "vivix" / "openapi" / "static"
    import hashlib

    listed = re.findall(
        r"\| `([^`]+)` \| `[^`]+`[^|]*\| `([0-9a-f]{64})` \|", (static / "VENDORED.md").read_text()
    )
    assert {name for name, _ in listed} >= {"swagger-ui-bundle.js", "redoc.standalone.js"}
    for name, digest in listed:
        assert hashlib.sha256((static / name).read_bytes()).hexdigest() == digest, name


# `make test` installs Debian's chromium; in CI a missing browser is a failure, not a skip.
@pytest.mark.skipif(
    CHROMIUM is None and os.environ.get("CI") != "true",
    reason="Chromium is not installed (apt-get install chromium)",
)
def test_swagger_ui_renders_every_operation_in_a_browser_without_network(
    live_server: LiveServer, tmp_path: Path
) -> None:
    assert CHROMIUM is not None, "CI needs Debian's chromium (make chromium installs it)"
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
        # The network is cut: no host resolves, except this machine's loopback address.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--virtual-time-budget=20000", "--dump-dom", f"{live_server.base_url}/docs",
    ]  # fmt: skip
    dom = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout
    rendered = set(re.findall(r'data-path="([^"]+)"', dom))
    assert rendered == set(openapi_document()["paths"]), rendered
