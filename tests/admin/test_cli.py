"""The operator CLI (API.md §6) through typer's CliRunner against a real database: every
command with --json, the key printed once, and errors that exit non-zero with a message.

Plain sync tests: each command runs its own event loop (asyncio.run)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from tests.conftest import Backend
from vivix.app import create_app
from vivix.cli import app
from vivix.kit.db import null_pool_engine
from vivix.migrations import head_revision
from vivix.models import Base
from vivix.runtime import build_runtime, close_runtime
from vivix.settings import load_settings


class Vivix:
    """`vivix …` against one database."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.runner = CliRunner()

    def run(self, *args: str, ok: bool = True) -> Result:
        result = self.runner.invoke(app, list(args), env=self.env, catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, (args, result.stdout, result.stderr)
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)


@pytest.fixture
def vivix(tmp_path: Path) -> Vivix:
    return Vivix(
        {
            "VIVIX_DATA_DIR": str(tmp_path / "data"),
            "VIVIX_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
        }
    )


def test_migrate_builds_a_fresh_database(vivix: Vivix, tmp_path: Path) -> None:
    assert vivix.json("migrate") == {"revision": head_revision()}
    assert (tmp_path / "cli.db").exists()
    human = vivix.run("migrate")
    assert head_revision() in human.stdout
    assert vivix.json("accounts", "list") == []


def test_accounts_create_show_update_and_list(vivix: Vivix) -> None:
    created = vivix.json("accounts", "create", "acme", "--tier", "ultimate", "--credits", "250")
    assert created["name"] == "acme"
    assert created["tier"] == "ultimate"
    assert created["balance"] == 250
    assert created["calls_per_minute"] == 600
    default = vivix.json("accounts", "create", "beta")
    assert default["tier"] == "pro"
    assert default["balance"] == 15000

    shown = vivix.json("accounts", "show", "acme")
    assert shown["id"] == created["id"]
    assert shown["ledger_sum"] == 250
    assert shown["keys"] == []
    assert vivix.json("accounts", "show", created["id"])["name"] == "acme"

    updated = vivix.json(
        "accounts",
        "update",
        "acme",
        "--tier",
        "pro",
        "--calls-per-minute",
        "30",
        "--concurrent-jobs",
        "2",
    )
    assert updated["tier"] == "pro"
    assert updated["calls_per_minute"] == 30
    assert updated["concurrent_jobs"] == 2
    assert vivix.json("accounts", "show", "acme")["calls_per_minute"] == 30

    listed = vivix.json("accounts", "list")
    assert [a["name"] for a in listed] == ["acme", "beta"]

    human = vivix.run("accounts", "show", "acme").stdout
    assert "acme" in human
    assert "250" in human
    assert "{" not in human  # a table, not JSON


def test_keys_create_prints_the_key_once_and_it_works(vivix: Vivix, tmp_path: Path) -> None:
    vivix.run("accounts", "create", "keyed", "--credits", "40")
    human = vivix.run("keys", "create", "keyed", "--name", "laptop").stdout
    key = human.splitlines()[0].strip()
    assert len(key) == 41
    assert key.startswith("vvx_live_")
    assert human.count(key) == 1
    created = vivix.json("keys", "create", "keyed", "--test")
    assert created["key"].startswith("vvx_test_")
    assert created["prefix"] == created["key"][:15]

    shown = vivix.run("accounts", "show", "keyed", "--json").stdout
    assert key not in shown
    assert created["key"] not in shown
    prefixes = {k["prefix"] for k in json.loads(shown)["keys"]}
    assert prefixes == {key[:15], created["prefix"]}

    # The API served from the same settings (same data dir, so the same key secret)
    # accepts the key the CLI printed.
    settings = load_settings(
        data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path / 'cli.db'}"
    )

    async def call_api() -> httpx.Response:
        runtime = await build_runtime(settings)
        try:
            transport = httpx.ASGITransport(app=create_app(settings, runtime=runtime))
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                return await http.get("/api/v1/credits", headers={"Authorization": f"Bearer {key}"})
        finally:
            await close_runtime(runtime)

    response = asyncio.run(call_api())
    assert response.status_code == 200
    assert response.json()["balance"] == 40


def test_keys_revoke_by_prefix_or_id(vivix: Vivix) -> None:
    vivix.run("accounts", "create", "revoking")
    first = vivix.json("keys", "create", "revoking")
    second = vivix.json("keys", "create", "revoking")
    by_prefix = vivix.json("keys", "revoke", first["prefix"])
    assert by_prefix["id"] == first["id"]
    assert by_prefix["revoked_at"]
    human = vivix.run("keys", "revoke", second["id"]).stdout
    assert "revoked" in human
    assert second["prefix"] in human
    keys = vivix.json("accounts", "show", "revoking")["keys"]
    assert all(k["revoked_at"] for k in keys)
    assert len(keys) == 2


def test_keys_list_shows_prefixes_and_revocations_never_keys(vivix: Vivix) -> None:
    vivix.run("accounts", "create", "listing")
    assert vivix.json("keys", "list", "listing") == []
    live = vivix.json("keys", "create", "listing", "--name", "backend")
    test = vivix.json("keys", "create", "listing", "--test")
    vivix.run("keys", "revoke", live["prefix"])
    listed = vivix.json("keys", "list", "listing")
    assert {k["id"] for k in listed} == {live["id"], test["id"]}
    by_id = {k["id"]: k for k in listed}
    assert by_id[live["id"]]["revoked_at"]
    assert by_id[test["id"]]["revoked_at"] is None
    assert by_id[test["id"]]["test"] is True
    assert all("key" not in k for k in listed)
    human = vivix.run("keys", "list", "listing").stdout
    assert live["prefix"] in human
    assert test["prefix"] in human
    assert live["key"] not in human
    missing = vivix.run("keys", "list", "nobody", ok=False)
    assert missing.exit_code == 1


def test_serve_on_a_busy_port_fails_before_creating_the_demo_key(
    vivix: Vivix, tmp_path: Path
) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        env = {**vivix.env, "VIVIX_PORT": str(port)}
        result = vivix.runner.invoke(app, ["serve"], env=env, catch_exceptions=False)
    assert result.exit_code == 2
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "VIVIX_PORT" in result.stderr
    assert "vvx_live_" not in result.stdout
    # Nothing was created: the next start on a free port still gets (and prints) the demo key.
    assert vivix.json("accounts", "list") == []


def test_credits_grant(vivix: Vivix) -> None:
    vivix.run("accounts", "create", "wallet", "--credits", "5")
    granted = vivix.json("credits", "grant", "wallet", "120", "--reason", "refund #7")
    assert granted["balance"] == 125
    shown = vivix.json("accounts", "show", "wallet")
    assert shown["balance"] == shown["ledger_sum"] == 125
    human = vivix.run("credits", "grant", "wallet", "1").stdout
    assert "126" in human
    adjusted = vivix.json(
        "credits", "adjust", "wallet", "--amount", "-26", "--reason", "refund reversed"
    )
    assert adjusted["balance"] == 100
    shown = vivix.json("accounts", "show", "wallet")
    assert shown["balance"] == shown["ledger_sum"] == 100


def test_models_allow_and_deny(vivix: Vivix) -> None:
    created = vivix.json("accounts", "create", "curated")
    assert "vivix-local-image" in created["allowed_models"]
    denied = vivix.json("models", "deny", "curated", "vivix-local-image", "vivix-local-audio")
    assert "vivix-local-image" not in denied["allowed_models"]
    assert "vivix-local-audio" not in denied["allowed_models"]
    allowed = vivix.json("models", "allow", "curated", "vivix-local-audio")
    assert "vivix-local-audio" in allowed["allowed_models"]
    everything = vivix.json("accounts", "show", "curated")["allowed_models"]
    vivix.run("models", "deny", "curated", *everything)
    assert vivix.json("accounts", "show", "curated")["allowed_models"] == []
    assert "(none)" in vivix.run("models", "deny", "curated", "seedream-4").stdout


def test_pricing_override_factor_rows_and_clear(vivix: Vivix) -> None:
    vivix.run("accounts", "create", "priced")
    factor = vivix.json(
        "pricing", "override", "priced", "grok-imagine-image-quality", "--factor", "0.8"
    )
    assert factor["credits_band"] == {"slug": "grok-imagine-image-quality", "min": 64, "max": 169}
    assert factor["price_overrides"]["grok-imagine-image-quality"] == {"factor": "0.8"}
    rows = json.dumps([{"credits": 9}])
    replaced = vivix.json("pricing", "override", "priced", "vivix-local-audio", "--rows", rows)
    # One flat row replaces "1 credit + 1 per second": every duration now costs 9.
    assert {k: replaced["credits_band"][k] for k in ("min", "max")} == {"min": 9, "max": 9}
    human = vivix.run("pricing", "override", "priced", "grok-imagine-image-quality", "--clear")
    assert "80-211" in human.stdout
    overrides = vivix.json("accounts", "show", "priced")["price_overrides"]
    assert set(overrides) == {"vivix-local-audio"}


def test_catalog_list(vivix: Vivix) -> None:
    models = {m["slug"]: m for m in vivix.json("catalog", "list")}
    assert models["vivix-local-image"]["available"] is True
    assert models["grok-imagine-image-quality"]["available"] is False  # no credentials here
    assert models["grok-imagine-image-quality"]["credits_band"] == {"min": 80, "max": 211}
    assert {r["provider"] for r in models["grok-imagine-image-quality"]["routes"]} == {"xai", "fal"}
    human = vivix.run("catalog", "list").stdout
    assert "vivix-local-image" in human


def test_catalog_list_shows_configured_providers(vivix: Vivix) -> None:
    vivix.env["VIVIX_PROVIDERS__FAL__API_KEY"] = "k"
    models = {m["slug"]: m for m in vivix.json("catalog", "list")}
    routes = {r["provider"]: r for r in models["grok-imagine-image-quality"]["routes"]}
    assert routes["fal"]["available"] is True
    assert routes["xai"]["available"] is False
    assert models["grok-imagine-image-quality"]["available"] is True


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("accounts", "show", "ghost"), "ghost"),
        (("accounts", "create", "x", "--tier", "gold"), "tier"),
        (("accounts", "create", "bad name!"), "name"),
        (("accounts", "update", "ghost", "--tier", "pro"), "ghost"),
        (("keys", "create", "ghost"), "ghost"),
        (("keys", "revoke", "vvx_live_nothing"), "vvx_live_nothing"),
        (("credits", "grant", "someone", "0"), "positive"),
        (("credits", "grant", "someone", str(2**63)), "at most"),
        (("accounts", "create", "rich", "--credits", str(2**63)), "credits"),
        (("accounts", "update", "someone", "--calls-per-minute", str(10**30)), "calls_per_minute"),
        (("accounts", "update", "someone", "--concurrent-jobs", str(10**9)), "concurrent_jobs"),
        (("accounts", "update", "someone", "--monthly-credits", str(2**63)), "monthly_credits"),
        (
            (
                "pricing",
                "override",
                "someone",
                "seedream-4",
                "--rows",
                f'[{{"credits": {10**21}}}]',
            ),
            "rows",
        ),
        (("models", "allow", "someone", "no-such-model"), "no-such-model"),
        (("pricing", "override", "someone", "seedream-4", "--factor", "-1"), "factor"),
        (("pricing", "override", "someone", "seedream-4"), "factor"),
        (("pricing", "override", "someone", "no-such-model", "--factor", "1"), "no-such-model"),
    ],
)
def test_errors_exit_non_zero_with_a_message(
    vivix: Vivix, args: tuple[str, ...], message: str
) -> None:
    vivix.run("accounts", "create", "someone")
    human = vivix.run(*args, ok=False)
    assert human.exit_code == 1
    assert "error" in human.stderr
    assert message in human.stderr
    machine = vivix.run(*args, "--json", ok=False)
    assert machine.exit_code == 1
    error = json.loads(machine.stdout)
    assert error["error"] in {"NOT_FOUND", "INVALID_PARAMS", "CONFLICT"}
    assert error["message"]


def test_duplicate_account_is_a_conflict(vivix: Vivix) -> None:
    vivix.run("accounts", "create", "twice")
    result = vivix.run("accounts", "create", "twice", "--json", ok=False)
    assert result.exit_code == 1
    assert json.loads(result.stdout)["error"] == "CONFLICT"


def test_bad_rows_json_and_bad_settings_exit_2(vivix: Vivix) -> None:
    vivix.run("accounts", "create", "someone")
    rows = vivix.run("pricing", "override", "someone", "seedream-4", "--rows", "[", ok=False)
    assert rows.exit_code == 2
    assert "--rows" in rows.stderr
    vivix.env["VIVIX_WORKER__CONCURRENCY"] = "many"
    settings = vivix.run("accounts", "list", ok=False)
    assert settings.exit_code == 2
    assert "VIVIX_WORKER__CONCURRENCY" in settings.stderr


async def _empty(url: str) -> None:
    engine = null_pool_engine(url)
    async with engine.begin() as connection:
        for table in reversed(Base.metadata.sorted_tables):
            await connection.execute(table.delete())
    await engine.dispose()


def test_cli_works_against_the_backend_database(backend: Backend, tmp_path: Path) -> None:
    vivix = Vivix({"VIVIX_DATA_DIR": str(tmp_path), "VIVIX_DATABASE_URL": backend.database_url})
    asyncio.run(_empty(backend.database_url))
    try:
        assert vivix.json("migrate") == {"revision": head_revision()}
        created = vivix.json("accounts", "create", "on-the-backend", "--credits", "7")
        key = vivix.json("keys", "create", "on-the-backend")
        shown = vivix.json("accounts", "show", "on-the-backend")
        assert shown["id"] == created["id"]
        assert shown["balance"] == shown["ledger_sum"] == 7
        assert [k["prefix"] for k in shown["keys"]] == [key["prefix"]]
    finally:
        asyncio.run(_empty(backend.database_url))


def test_the_cli_module_imports_no_server_code_until_a_command_runs() -> None:
    """`vivix --help` must answer at once (bench/bench_cli.py measures it): the heavy
    imports happen inside the commands."""
    import subprocess
    import sys

    heavy = ("sqlalchemy", "pydantic_settings", "fastapi", "rich", "uvicorn", "vivix.settings")
    probe = f"import sys, vivix.cli; print([m for m in {heavy!r} if m in sys.modules])"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]"
