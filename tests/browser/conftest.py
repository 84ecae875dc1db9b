"""Browser tests of the Studio: Playwright drives Debian's chromium against a real `vivix
serve` (API + embedded worker + local renderer), as a person with a browser uses it.

One server and one chromium are shared by the whole package (one xdist group, so one
worker runs them all). Every page a test opens records each request the browser makes;
when the test ends, all of them must have gone to the server's own origin. Chromium can
resolve no host but 127.0.0.1 anyway, so nothing would leave this machine."""

from __future__ import annotations

import itertools
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.processes import ServerProcess, running_server_with_worker, server_env

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
IN_CI = os.environ.get("CI", "").lower() == "true"
ADMIN_TOKEN = "browser-admin-token-of-at-least-32-characters"
PASSWORD = "correct horse battery staple"
MODELS = ("vivix-local-image", "vivix-local-audio", "vivix-local-video")
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
GROUP = "browser"
# A render can wait behind others on a loaded 2-core machine: waits for a result allow this.
RENDER_MS = 120_000
SCREENSHOTS = Path(__file__).parents[2] / "docs" / "screenshots"


# One xdist group: one worker runs them all, with one server and one chromium. xdist 3.8
# tells its scheduler the group by suffixing `item._nodeid`, which pytest 9 no longer reads
# (the id lives in `item._id`): the suffix is set here so `--dist loadgroup` works.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.xdist_group(GROUP))
            if config.getoption("loadgroup", default=False) and hasattr(item, "_id"):
                from _pytest.nodeid import coerce_node_id

                item._id = coerce_node_id(f"{item.nodeid}@{GROUP}")


@dataclass(frozen=True)
class User:
    email: str
    password: str
    account: str
    account_id: str


@dataclass
class Studio:
    """The running server, an operator API client, and ways to make users."""

    process: ServerProcess
    admin: httpx.Client
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    # Emails differ between runs: sign-in throttling counts per email, in a shared Redis.
    _run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @property
    def base_url(self) -> str:
        return self.process.base_url

    @property
    def origin(self) -> str:
        return origin_of(self.base_url)

    def user(
        self,
        *,
        tier: str = "free",
        credits: int | None = 1000,
        operator: bool = False,
        name: str | None = None,
        email: str | None = None,
    ) -> User:
        """A user in a fresh account of its own, with the local models allowed."""
        n = next(self._names)
        name = name or f"browser-{n}"
        created = self.admin.post(
            "/admin/v1/accounts", json={"name": name, "tier": tier, "credits": credits}
        )
        assert created.status_code == 201, created.text
        allowed = self.admin.post(
            f"/admin/v1/accounts/{name}/models/allow", json={"slugs": list(MODELS)}
        )
        assert allowed.status_code == 200, allowed.text
        email = email or f"person{n}.{self._run}@example.com"
        made = self.admin.post(
            "/admin/v1/users",
            json={"email": email, "account": name, "operator": operator, "password": PASSWORD},
        )
        assert made.status_code == 201, made.text
        return User(email, PASSWORD, name, created.json()["id"])

    def account(self, name: str) -> dict[str, Any]:
        shown = self.admin.get(f"/admin/v1/accounts/{name}")
        assert shown.status_code == 200, shown.text
        result: dict[str, Any] = shown.json()
        return result

    def api_key(self, name: str) -> str:
        created = self.admin.post(f"/admin/v1/accounts/{name}/keys", json={})
        assert created.status_code == 201, created.text
        key: str = created.json()["key"]
        return key


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@pytest.fixture(scope="package")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Studio]:
    home = tmp_path_factory.mktemp("browser")
    with studio_server(studio_server_env(home), home) as server:
        yield server


def studio_server_env(home: Path, **settings: str) -> dict[str, str]:
    return server_env(
        DATA_DIR=str(home / "data"),
        ADMIN_TOKEN=ADMIN_TOKEN,
        SECRET_KEY="browser-secret",
        WORKER__POLL_INTERVAL_SECONDS="0.2",
        WEBHOOKS__ALLOW_INSECURE_TARGETS="true",
        **settings,
    )


@contextmanager
def studio_server(env: dict[str, str], home: Path) -> Iterator[Studio]:
    """`vivix serve` with its worker on `env`, and an operator API client for it."""
    with (
        running_server_with_worker(env, home / "logs") as process,
        httpx.Client(
            base_url=process.base_url,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=30.0,
        ) as admin,
    ):
        yield Studio(process, admin)


@pytest.fixture(scope="package")
def chromium() -> Iterator[Any]:
    # `make test` installs Debian's chromium; in CI a missing browser is a failure.
    if CHROMIUM is None and not IN_CI:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    assert CHROMIUM is not None, "CI needs Debian's chromium (make chromium installs it)"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                # No host resolves except this machine's loopback address.
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            ],
        )
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Pages:
    """Opens browser contexts (one per person) on the Studio; remembers every request."""

    chromium: Any
    studio: Studio
    requests: list[str] = field(default_factory=list)
    contexts: list[Any] = field(default_factory=list)
    also_allowed: set[str] = field(default_factory=set)  # a test's own other origins

    def new(self, viewport: dict[str, int] | None = None, **options: Any) -> Any:
        context = self.chromium.new_context(
            base_url=self.studio.base_url,
            viewport=viewport or DESKTOP,
            color_scheme=options.pop("color_scheme", "light"),
            accept_downloads=True,
            **options,
        )
        context.set_default_timeout(30_000)
        context.on("request", lambda request: self.requests.append(request.url))
        self.contexts.append(context)
        page = context.new_page()
        # Revoking asks for confirmation: the person says yes.
        page.on("dialog", lambda dialog: dialog.accept())
        return page

    def signed_in(self, user: User, viewport: dict[str, int] | None = None, **options: Any) -> Any:
        page = self.new(viewport, **options)
        sign_in(page, user.email, user.password)
        page.wait_for_url("**/generate")
        return page


def sign_in(page: Any, email: str, password: str) -> None:
    page.goto("/signin")
    page.fill("#email", email)
    page.fill("#password", password)
    page.click("button[type=submit]")


@contextmanager
def browsing(chromium: Any, studio: Studio) -> Iterator[Pages]:
    """Pages on `studio`; on the way out, every request they made must have stayed on the
    server's own origin (no fonts, CDNs or analytics from elsewhere)."""
    opened = Pages(chromium, studio)
    try:
        yield opened
    finally:
        for context in opened.contexts:
            context.close()
    allowed = {studio.origin, *opened.also_allowed}
    foreign = [url for url in opened.requests if origin_of(url) not in allowed]
    assert not foreign, f"requests left {studio.origin}: {foreign}"
    assert opened.requests or not opened.contexts, "the browser made no request at all"


@pytest.fixture
def pages(chromium: Any, studio: Studio) -> Iterator[Pages]:
    with browsing(chromium, studio) as opened:
        yield opened


def until(condition: Callable[[], Any], timeout_s: float = 60.0) -> Any:
    """Poll `condition` (a server-side fact) until it is truthy."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout_s}s: {condition}")
        time.sleep(0.1)
