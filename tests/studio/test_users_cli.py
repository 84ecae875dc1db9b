"""`vivix users create|list` (STUDIO.md): the generated password is printed once and
signs in; without --account the user gets a new free account of their own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.admin.test_cli import Vivix
from vivix.cli import app


@pytest.fixture
def vivix(tmp_path: Path) -> Vivix:
    return Vivix(
        {
            "VIVIX_DATA_DIR": str(tmp_path / "data"),
            "VIVIX_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
        }
    )


def test_users_create_makes_a_free_account_and_prints_the_password_once(vivix: Vivix) -> None:
    created = vivix.json("users", "create", "Ada@Example.com")
    assert set(created) == {"user_id", "email", "account_id", "password"}
    assert created["email"] == "ada@example.com"
    assert len(created["password"]) >= 16
    accounts = vivix.json("accounts", "list")
    assert [(a["id"], a["tier"]) for a in accounts] == [(created["account_id"], "free")]
    listed = vivix.json("users", "list")
    assert [u["email"] for u in listed] == ["ada@example.com"]
    assert created["password"] not in json.dumps(listed)


def test_users_create_joins_an_account_as_operator_with_a_password_from_stdin(
    vivix: Vivix,
) -> None:
    account = vivix.json("accounts", "create", "studio-co", "--tier", "standard")
    result = CliRunner().invoke(
        app,
        ["users", "create", "op@example.com", "--account", "studio-co", "--operator",
         "--password-stdin", "--json"],
        input="a long enough passphrase\n",
        env=vivix.env,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    created = json.loads(result.stdout)
    assert created["account_id"] == account["id"]
    assert created["password"] is None  # never echoed when the operator chose it
    assert vivix.json("users", "list")[0]["operator"] is True
    human = vivix.run("users", "create", "second@example.com", "--account", "studio-co").stdout
    assert "password (shown once):" in human


def test_users_create_refuses_bad_input_with_a_message(vivix: Vivix) -> None:
    vivix.json("users", "create", "dup@example.com")
    duplicate = vivix.run("users", "create", "dup@example.com", ok=False)
    assert duplicate.exit_code == 1
    assert "already exists" in duplicate.stderr
    bad = vivix.run("users", "create", "not-an-email", "--json", ok=False)
    assert json.loads(bad.stdout)["error"] == "INVALID_PARAMS"
    missing = vivix.run("users", "create", "x@example.com", "--account", "nope", ok=False)
    assert "No account named" in missing.stderr
    short = CliRunner().invoke(
        app,
        ["users", "create", "y@example.com", "--password-stdin"],
        input="short\n",
        env=vivix.env,
    )
    assert short.exit_code == 1
    assert "at least 10 characters" in short.stderr
    assert [u["email"] for u in vivix.json("users", "list")] == ["dup@example.com"]
