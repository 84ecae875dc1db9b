"""The admin token: at least 32 characters or the process does not start, and wrong
tokens are throttled per client address (429 with Retry-After)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from vivix.app import create_app
from vivix.cli import app as cli
from vivix.runtime import Runtime
from vivix.settings import SettingsError, load_settings

TOKEN = "a-long-enough-operator-token-0123456789"


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {"admin_token": TOKEN}


def test_a_short_admin_token_stops_the_start_naming_the_variable(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"VIVIX_ADMIN_TOKEN: .*at least 32 characters"):
        load_settings(admin_token="x" * 31)
    assert load_settings(admin_token="x" * 32).admin_token == "x" * 32
    assert load_settings(admin_token="").admin_token is None  # empty = admin API off
    env = {"VIVIX_DATA_DIR": str(tmp_path), "VIVIX_ADMIN_TOKEN": "too-short"}
    for args in (["serve"], ["worker"], ["accounts", "list"]):
        result = CliRunner().invoke(cli, args, env=env)
        assert result.exit_code == 2, (args, result.stdout)
        assert "VIVIX_ADMIN_TOKEN" in result.stderr
        assert "32" in result.stderr
    assert not (tmp_path / "vivix.db").exists()  # refused before touching anything


def _client(runtime: Runtime, address: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(
        app=create_app(runtime.settings, runtime=runtime), client=(address, 50000)
    )
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def test_failed_admin_attempts_are_throttled_per_address(runtime: Runtime) -> None:
    allowance = runtime.settings.admin.failed_attempts_per_minute
    good = {"Authorization": f"Bearer {TOKEN}"}
    async with _client(runtime, "203.0.113.7") as attacker, _client(runtime, "198.51.100.2") as ops:
        for attempt in range(allowance):
            wrong = await attacker.get(
                "/admin/v1/accounts", headers={"Authorization": f"Bearer guess-{attempt}"}
            )
            assert wrong.status_code == 401, attempt
        throttled = await attacker.get("/admin/v1/accounts", headers={"Authorization": "Bearer x"})
        assert throttled.status_code == 429
        body = throttled.json()
        assert body["error"] == "RATE_LIMIT"
        retry_after = int(throttled.headers["retry-after"])
        assert 1 <= retry_after <= 60
        assert body["retry_after"] == retry_after
        # Even the right token waits out the window from that address...
        assert (await attacker.get("/admin/v1/accounts", headers=good)).status_code == 429
        # ...while the operator elsewhere is not locked out.
        assert (await ops.get("/admin/v1/accounts", headers=good)).status_code == 200
        for _ in range(allowance + 2):  # successes are never counted
            assert (await ops.get("/admin/v1/accounts", headers=good)).status_code == 200
