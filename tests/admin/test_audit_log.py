"""The operator audit log: every admin action, through the CLI and through /admin/v1, is
recorded with who did it, what it changed (fields before and after) and nothing else;
refused actions leave no entry. Read back through the same face that made the change."""

from __future__ import annotations

import asyncio
import getpass
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from tests.conftest import Backend, empty_tables, make_settings
from vivix.cli import app as cli
from vivix.runtime import build_runtime, close_runtime

TOKEN = "audit-log-operator-token-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@dataclass(frozen=True)
class Case:
    """One admin action: the same change as an HTTP call and as a CLI command, and the
    entry it must leave."""

    action: str
    http: tuple[str, str, dict[str, Any] | None]  # method, path, JSON body
    cli: tuple[str, ...]
    before: dict[str, Any] | None
    after: dict[str, Any]
    details: dict[str, Any] | None = None
    target_type: str = "account"
    # A change made first through the same face (the account must start elsewhere).
    setup_http: tuple[str, str, dict[str, Any] | None] | None = None
    setup_cli: tuple[str, ...] | None = None


TIMESTAMP = "<a timestamp>"  # any ISO 8601 UTC time

# The account every case starts from: pro, 100 credits, tier defaults, the tier's models.
CASES = [
    Case(
        "account.update",
        ("PATCH", "/admin/v1/accounts/acme", {"tier": "ultimate"}),
        ("accounts", "update", "acme", "--tier", "ultimate"),
        {"tier": "pro"},
        {"tier": "ultimate"},
    ),
    Case(
        "account.update",
        ("PATCH", "/admin/v1/accounts/acme", {"calls_per_minute": 600, "concurrent_jobs": 9}),
        ("accounts", "update", "acme", "--calls-per-minute", "600", "--concurrent-jobs", "9"),
        {"calls_per_minute": None, "concurrent_jobs": None},
        {"calls_per_minute": 600, "concurrent_jobs": 9},
    ),
    Case(
        "account.update",
        ("PATCH", "/admin/v1/accounts/acme", {"monthly_credits": 0}),
        ("accounts", "update", "acme", "--monthly-credits", "0"),
        {"monthly_credits": None},
        {"monthly_credits": 0},
    ),
    Case(
        "credits.grant",
        ("POST", "/admin/v1/accounts/acme/credits", {"amount": 500, "reason": "pilot"}),
        ("credits", "grant", "acme", "500", "--reason", "pilot"),
        {"balance": 100},
        {"balance": 600},
        {"amount": 500, "reason": "pilot"},
    ),
    Case(
        "models.allow",
        ("POST", "/admin/v1/accounts/acme/models/allow", {"slugs": ["gpt-image-1"]}),
        ("models", "allow", "acme", "gpt-image-1"),
        {"allowed_models": "without gpt-image-1"},
        {"allowed_models": "with gpt-image-1"},
        {"slugs": ["gpt-image-1"]},
        setup_http=("POST", "/admin/v1/accounts/acme/models/deny", {"slugs": ["gpt-image-1"]}),
        setup_cli=("models", "deny", "acme", "gpt-image-1"),
    ),
    Case(
        "models.deny",
        ("POST", "/admin/v1/accounts/acme/models/deny", {"slugs": ["vivix-local-image"]}),
        ("models", "deny", "acme", "vivix-local-image"),
        {"allowed_models": "with vivix-local-image"},
        {"allowed_models": "without vivix-local-image"},
        {"slugs": ["vivix-local-image"]},
    ),
    Case(
        "pricing.override",
        ("PUT", "/admin/v1/accounts/acme/pricing/seedream-4", {"factor": "0.8"}),
        ("pricing", "override", "acme", "seedream-4", "--factor", "0.8"),
        {"price_overrides": {}},
        {"price_overrides": {"seedream-4": {"factor": "0.8"}}},
        {"model": "seedream-4"},
    ),
    Case(
        "credits.adjust",
        ("POST", "/admin/v1/accounts/acme/credits/adjust", {"amount": -30, "reason": "double"}),
        ("credits", "adjust", "acme", "--amount", "-30", "--reason", "double"),
        {"balance": 100},
        {"balance": 70},
        {"amount": -30, "reason": "double"},
    ),
    Case(
        "account.suspend",
        ("POST", "/admin/v1/accounts/acme/suspend", None),
        ("accounts", "suspend", "acme"),
        {"suspended_at": None},
        {"suspended_at": TIMESTAMP},
    ),
    Case(
        "account.reinstate",
        ("POST", "/admin/v1/accounts/acme/reinstate", None),
        ("accounts", "reinstate", "acme"),
        {"suspended_at": TIMESTAMP},
        {"suspended_at": None},
        setup_http=("POST", "/admin/v1/accounts/acme/suspend", None),
        setup_cli=("accounts", "suspend", "acme"),
    ),
    Case(
        "user.create",
        ("POST", "/admin/v1/users", {"email": "ops@example.com", "account": "acme"}),
        ("users", "create", "ops@example.com", "--account", "acme"),
        None,
        {"email": "ops@example.com", "operator": False, "account": "acme"},
        target_type="user",
    ),
    Case(
        "key.create",
        ("POST", "/admin/v1/accounts/acme/keys", {"name": "backend"}),
        ("keys", "create", "acme", "--name", "backend"),
        None,
        {"name": "backend", "test": False, "prefix": "vvx_live_"},
        target_type="api_key",
    ),
]


def _check_allowlist(expected: str, models: list[str]) -> None:
    presence, slug = expected.split(" ")
    assert (slug in models) == (presence == "with"), (expected, models)


def assert_entry(entry: dict[str, Any], case: Case, actor: str, account_id: str) -> None:
    assert entry["action"] == case.action
    assert entry["actor"] == actor
    assert entry["target_type"] == case.target_type
    assert entry["account_id"] == account_id
    if case.target_type == "account":
        assert entry["target_id"] == account_id
    assert entry["created_at"].endswith("Z")
    if case.details is not None:
        assert entry["details"] == case.details
    for side, expected in (("before", case.before), ("after", case.after)):
        recorded = entry[side]
        if expected is None:
            assert recorded is None
            continue
        assert set(recorded) == set(expected), (side, recorded)  # only what changed
        for field, value in expected.items():
            if field == "allowed_models":
                _check_allowlist(value, recorded[field])
            elif field == "prefix":
                assert recorded[field].startswith(value)
            elif value == TIMESTAMP:
                assert recorded[field].endswith("Z"), (side, field, recorded)
            else:
                assert recorded[field] == value, (side, field, recorded)


# -- HTTP --------------------------------------------------------------------------------


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {"admin_token": TOKEN}


async def _admin(client: httpx.AsyncClient, method: str, path: str, body: Any = None) -> Any:
    response = await client.request(method, path, json=body, headers=ADMIN)
    assert response.status_code in (200, 201), response.text
    return response.json()


async def _log(client: httpx.AsyncClient, query: str = "") -> list[dict[str, Any]]:
    page = await _admin(client, "GET", f"/admin/v1/audit-log{query}")
    data: list[dict[str, Any]] = page["data"]
    return data


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.action}:{c.cli[-1]}")
async def test_admin_action_over_http_is_in_the_audit_log(
    client: httpx.AsyncClient, case: Case
) -> None:
    account = await _admin(client, "POST", "/admin/v1/accounts", {"name": "acme", "credits": 100})
    if case.setup_http:
        await _admin(client, *case.setup_http)
    method, path, body = case.http
    response = await client.request(method, path, json=body, headers=ADMIN)
    assert response.status_code in (200, 201), response.text
    request_id = response.headers["x-request-id"]
    newest, *_, created = await _log(client)
    assert created["action"] == "account.create"
    assert_entry(newest, case, "admin-token@127.0.0.1", account["id"])
    assert newest["request_id"] == request_id


async def test_account_creation_key_revocation_and_price_clear_over_http(
    client: httpx.AsyncClient,
) -> None:
    account = await _admin(
        client, "POST", "/admin/v1/accounts", {"name": "acme", "tier": "ultimate", "credits": 7}
    )
    (created,) = await _log(client)
    assert created["action"] == "account.create"
    assert created["before"] is None
    assert created["after"]["tier"] == "ultimate"
    assert created["after"]["balance"] == 7
    assert created["details"] == {"opening_credits": 7}

    key = await _admin(client, "POST", "/admin/v1/accounts/acme/keys", {})
    await _admin(client, "POST", f"/admin/v1/keys/{key['prefix']}/revoke")
    revoked = (await _log(client))[0]
    assert revoked["action"] == "key.revoke"
    assert (revoked["target_type"], revoked["target_id"]) == ("api_key", key["id"])
    assert revoked["before"]["revoked_at"] is None
    assert revoked["after"]["revoked_at"].endswith("Z")
    assert key["key"] not in json.dumps(await _log(client))  # never the secret itself

    await _admin(client, "PUT", "/admin/v1/accounts/acme/pricing/seedream-4", {"factor": 0.5})
    await _admin(client, "DELETE", "/admin/v1/accounts/acme/pricing/seedream-4")
    cleared = (await _log(client))[0]
    assert cleared["action"] == "pricing.clear"
    assert cleared["before"] == {"price_overrides": {"seedream-4": {"factor": "0.5"}}}
    assert cleared["after"] == {"price_overrides": {}}
    assert all(e["account_id"] == account["id"] for e in await _log(client))


async def test_refused_admin_actions_leave_no_entry(client: httpx.AsyncClient) -> None:
    await _admin(client, "POST", "/admin/v1/accounts", {"name": "acme"})
    before = await _log(client)
    for method, path, body in (
        ("POST", "/admin/v1/accounts/nobody/credits", {"amount": 5}),
        ("POST", "/admin/v1/accounts/acme/credits", {"amount": 0}),
        ("PATCH", "/admin/v1/accounts/acme", {"tier": "gold"}),
        ("POST", "/admin/v1/accounts/acme/models/allow", {"slugs": ["no-such-model"]}),
        ("PUT", "/admin/v1/accounts/acme/pricing/seedream-4", {"factor": "-1"}),
        ("POST", "/admin/v1/keys/vvx_live_nothing/revoke", None),
        ("POST", "/admin/v1/accounts", {"name": "acme"}),
    ):
        response = await client.request(method, path, json=body, headers=ADMIN)
        assert response.status_code in (404, 409, 422), (path, response.text)
    assert await _log(client) == before
    wrong = await client.post(
        "/admin/v1/accounts/acme/credits", json={"amount": 5}, headers={"Authorization": "x"}
    )
    assert wrong.status_code == 401
    assert await _log(client) == before


async def test_audit_log_filters_and_pages(client: httpx.AsyncClient) -> None:
    for name in ("a1", "a2"):
        await _admin(client, "POST", "/admin/v1/accounts", {"name": name})
    for amount in range(1, 6):
        await _admin(client, "POST", "/admin/v1/accounts/a1/credits", {"amount": amount})
    grants = await _log(client, "?action=credits.grant")
    assert [e["details"]["amount"] for e in grants] == [5, 4, 3, 2, 1]  # newest first
    assert len(await _log(client, "?account=a2")) == 1
    assert len(await _log(client, "?account=a1")) == 6
    page = await _admin(client, "GET", "/admin/v1/audit-log?account=a1&limit=4")
    assert page["has_more"] is True
    rest = await _admin(
        client, "GET", f"/admin/v1/audit-log?account=a1&limit=4&cursor={page['next_cursor']}"
    )
    assert (rest["has_more"], rest["next_cursor"]) == (False, None)
    ids = [e["id"] for e in page["data"] + rest["data"]]
    assert ids == sorted(ids, reverse=True)
    assert len(set(ids)) == 6
    for query, field in (("?limit=0", "limit"), ("?cursor=zzz", "cursor")):
        bad = await client.get(f"/admin/v1/audit-log{query}", headers=ADMIN)
        assert bad.status_code == 422
        assert bad.json()["field"] == field
    unknown = await client.get("/admin/v1/audit-log?account=nobody", headers=ADMIN)
    assert unknown.status_code == 404
    assert (await client.get("/admin/v1/audit-log")).status_code == 401


# -- CLI ---------------------------------------------------------------------------------


class Vivix:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def json(self, *args: str) -> Any:
        result = CliRunner().invoke(cli, [*args, "--json"], env=self.env, catch_exceptions=False)
        assert result.exit_code == 0, (args, result.stdout, result.stderr)
        return json.loads(result.stdout)


async def _reset(backend: Backend, tmp_path: Path) -> None:
    runtime = await build_runtime(make_settings(backend, tmp_path))
    try:
        await empty_tables(runtime)
    finally:
        await close_runtime(runtime)


@pytest.fixture
def vivix(backend: Backend, tmp_path: Path) -> Iterator[Vivix]:
    asyncio.run(_reset(backend, tmp_path))
    yield Vivix(
        {
            "VIVIX_DATA_DIR": str(tmp_path),
            "VIVIX_DATABASE_URL": backend.database_url,
            "VIVIX_SECRET_KEY": "test-secret",
        }
    )
    asyncio.run(_reset(backend, tmp_path))


CLI_ACTOR = f"cli:{getpass.getuser()}@{socket.gethostname()}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.action}:{c.cli[-1]}")
def test_admin_action_over_the_cli_is_in_the_audit_log(vivix: Vivix, case: Case) -> None:
    account = vivix.json("accounts", "create", "acme", "--credits", "100")
    if case.setup_cli:
        vivix.json(*case.setup_cli)
    vivix.json(*case.cli)
    page = vivix.json("audit-log")
    newest, *_, created = page["data"]
    assert created["action"] == "account.create"
    assert created["actor"] == CLI_ACTOR
    assert_entry(newest, case, CLI_ACTOR, account["id"])
    assert newest["request_id"] is None


def test_cli_key_revocation_price_clear_and_filters(vivix: Vivix) -> None:
    vivix.json("accounts", "create", "acme")
    key = vivix.json("keys", "create", "acme")
    vivix.json("keys", "revoke", key["prefix"])
    vivix.json("pricing", "override", "acme", "seedream-4", "--factor", "0.9")
    vivix.json("pricing", "override", "acme", "seedream-4", "--clear")
    actions = [e["action"] for e in vivix.json("audit-log")["data"]]
    assert actions == [
        "pricing.clear",
        "pricing.override",
        "key.revoke",
        "key.create",
        "account.create",
    ]
    (revoked,) = vivix.json("audit-log", "--action", "key.revoke")["data"]
    assert revoked["before"]["revoked_at"] is None
    assert revoked["after"]["revoked_at"] is not None
    first = vivix.json("audit-log", "--limit", "2")
    assert first["has_more"] is True
    second = vivix.json("audit-log", "--limit", "2", "--cursor", first["next_cursor"])
    assert [e["action"] for e in second["data"]] == ["key.revoke", "key.create"]
    assert vivix.json("audit-log", "--actor", "someone-else")["data"] == []
