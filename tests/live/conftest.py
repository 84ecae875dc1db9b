"""One real `vivix serve` (API + embedded worker, SQLite, local files) shared by the tests
in this package: the SDK, the CLI for API users, schemathesis and the /docs page talk to it
over real HTTP, as a user's program would.

The tests here share an xdist group, so one worker runs them all against one server."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.processes import ServerProcess, running_server_with_worker, server_env

ADMIN_TOKEN = "live-admin-token-of-at-least-32-characters"
# Added to the shipped catalog: a model whose every render fails (the local renderer has no
# 7:3 aspect ratio), so failures can be seen end to end.
BROKEN_MODEL = "broken-local-image"
OPERATOR_CATALOG = f"""
[[models]]
slug = "{BROKEN_MODEL}"
name = "Broken"
category = "image"
creator = "test"
description = "Every render fails."
example_request = {{ model = "{BROKEN_MODEL}", prompt = "x" }}
default_tiers = ["pro", "ultimate"]
[models.params]
prompt = {{ type = "string", required = true, max_length = 2000 }}
aspect_ratio = {{ type = "enum", values = ["7:3"], default = "7:3" }}
[[models.pricing]]
credits = 10
[[models.routes]]
provider = "local"
upstream_model = "image"
"""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.xdist_group("live_server"))


@dataclass(frozen=True)
class LiveAccount:
    name: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@dataclass
class LiveServer:
    process: ServerProcess
    admin: httpx.Client
    _names: Iterator[int]

    @property
    def base_url(self) -> str:
        return self.process.base_url

    def account(self, *, test_key: bool = False, **settings: Any) -> LiveAccount:
        """A fresh account (pro tier unless `tier=`), with `settings` applied through the
        admin API (`credits`, `calls_per_minute`, `concurrent_jobs`, ...)."""
        name = f"live-{next(self._names)}"
        credits = settings.pop("credits", None)
        created = self.admin.post(
            "/admin/v1/accounts",
            json={"name": name, "tier": settings.pop("tier", "pro"), "credits": credits},
        )
        assert created.status_code == 201, created.text
        if settings:
            updated = self.admin.patch(f"/admin/v1/accounts/{name}", json=settings)
            assert updated.status_code == 200, updated.text
        key = self.admin.post(f"/admin/v1/accounts/{name}/keys", json={"test": test_key})
        assert key.status_code == 201, key.text
        return LiveAccount(name, key.json()["key"])

    def revoke(self, key: str) -> None:
        revoked = self.admin.post(f"/admin/v1/keys/{key[:15]}/revoke")
        assert revoked.status_code == 200, revoked.text

    def deny(self, name: str, *slugs: str) -> None:
        denied = self.admin.post(
            f"/admin/v1/accounts/{name}/models/deny", json={"slugs": list(slugs)}
        )
        assert denied.status_code == 200, denied.text

    def ledger_sum(self, name: str) -> int:
        shown = self.admin.get(f"/admin/v1/accounts/{name}").json()
        total: int = shown["ledger_sum"]
        return total


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp("live")
    catalog = home / "catalog.toml"
    catalog.write_text(OPERATOR_CATALOG)
    env = server_env(
        DATA_DIR=str(home / "data"),
        CATALOG_PATH=str(catalog),
        ADMIN_TOKEN=ADMIN_TOKEN,
        SECRET_KEY="live-secret",
        WORKER__POLL_INTERVAL_SECONDS="0.2",
    )
    with running_server_with_worker(env, home / "logs") as process:
        admin = httpx.Client(
            base_url=process.base_url,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=30.0,
        )
        try:
            yield LiveServer(process, admin, itertools.count(1))
        finally:
            admin.close()
