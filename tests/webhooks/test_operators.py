"""Operators manage any account's endpoints: /admin/v1 and `vivix webhooks list|add|
rotate|disable ACCOUNT …`, every change in the operator audit log (never the secret)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from tests.factories import account_with_key
from vivix.cli import app
from vivix.runtime import Runtime

TOKEN = "operator-token-0123456789-abcdefghij"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {"admin_token": TOKEN, "webhooks": {"allow_insecure_targets": True}}


async def test_admin_api_adds_lists_rotates_and_disables_with_audit_entries(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime)
    base = f"/admin/v1/accounts/{acct.name}/webhooks"
    added = await client.post(
        base, json={"url": "http://127.0.0.1:9/hook", "description": "ops"}, headers=ADMIN
    )
    assert added.status_code == 201, added.text
    webhook = added.json()
    secret = webhook["secret"]
    assert secret.startswith("whsec_")
    # The customer sees it on their own API.
    mine = (await client.get("/api/v1/webhooks", headers=acct.headers)).json()["data"]
    assert [w["id"] for w in mine] == [webhook["id"]]

    listed = (await client.get(base, headers=ADMIN)).json()["data"]
    assert [w["id"] for w in listed] == [webhook["id"]]
    rotated = await client.post(f"{base}/{webhook['id']}/rotate", json={}, headers=ADMIN)
    assert rotated.status_code == 200, rotated.text
    new_secret = rotated.json()["secret"]
    assert rotated.json()["previous_secret_expires_at"] is not None
    disabled = await client.post(
        f"{base}/{webhook['id']}/disable", json={"reason": "abuse"}, headers=ADMIN
    )
    assert disabled.status_code == 200, disabled.text
    assert (disabled.json()["enabled"], disabled.json()["disabled_reason"]) == (False, "abuse")

    bad = await client.post(base, json={"url": "ftp://x/"}, headers=ADMIN)
    assert (bad.status_code, bad.json()["field"]) == (422, "url")
    other = await account_with_key(runtime)
    foreign = await client.post(
        f"/admin/v1/accounts/{other.name}/webhooks/{webhook['id']}/disable", json={}, headers=ADMIN
    )
    assert (foreign.status_code, foreign.json()["error"]) == (404, "WEBHOOK_NOT_FOUND")

    log = (await client.get(f"/admin/v1/audit-log?account={acct.name}", headers=ADMIN)).json()
    actions = [e["action"] for e in log["data"] if e["target_type"] == "webhook"]
    assert actions == ["webhook.disable", "webhook.rotate", "webhook.create"]
    assert all(
        e["actor"].startswith("admin-token@") for e in log["data"] if e["target_type"] == "webhook"
    )
    text = json.dumps(log)
    assert secret not in text
    assert new_secret not in text
    assert secret[:12] in text  # the prefixes show which secret was replaced


def test_cli_webhooks_list_add_rotate_disable(tmp_path: Path) -> None:
    env = {
        "VIVIX_DATA_DIR": str(tmp_path / "data"),
        "VIVIX_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
        "VIVIX_WEBHOOKS__ALLOW_INSECURE_TARGETS": "true",
    }
    runner = CliRunner()

    def run(*args: str, ok: bool = True) -> str:
        result = runner.invoke(app, list(args), env=env, catch_exceptions=False)
        assert (result.exit_code == 0) == ok, (args, result.stdout, result.stderr)
        return result.stdout

    run("accounts", "create", "acme", "--json")
    added = json.loads(
        run(
            "webhooks",
            "add",
            "acme",
            "http://127.0.0.1:9/hook",
            "--event",
            "generation.failed",
            "--description",
            "pager",
            "--json",
        )
    )
    assert added["events"] == ["generation.failed"]
    assert added["secret"].startswith("whsec_")
    human = run("webhooks", "add", "acme", "http://127.0.0.1:9/other")
    assert "whsec_" in human
    assert "shown once" in human
    listed = json.loads(run("webhooks", "list", "acme", "--json"))
    assert len(listed) == 2
    assert all("secret" not in w for w in listed)
    rotated = json.loads(run("webhooks", "rotate", "acme", added["id"], "--json"))
    assert rotated["secret"] != added["secret"]
    now = json.loads(
        run("webhooks", "rotate", "acme", added["id"], "--expire-previous-now", "--json")
    )
    assert now["previous_secret_expires_at"] is None
    disabled = json.loads(
        run("webhooks", "disable", "acme", added["id"], "--reason", "moved", "--json")
    )
    assert (disabled["enabled"], disabled["disabled_reason"]) == (False, "moved")
    assert "WEBHOOK_NOT_FOUND" in run(
        "webhooks", "disable", "acme", "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", "--json", ok=False
    )
    assert "INVALID_PARAMS" in run("webhooks", "add", "acme", "ftp://x/", "--json", ok=False)
    log = json.loads(run("audit-log", "--account", "acme", "--json"))
    actions = [e["action"] for e in log["data"] if e["target_type"] == "webhook"]
    assert actions == [
        "webhook.disable",
        "webhook.rotate",
        "webhook.rotate",
        "webhook.create",
        "webhook.create",
    ]
    assert all(e["actor"].startswith("cli:") for e in log["data"])
    assert added["secret"] not in json.dumps(log)
