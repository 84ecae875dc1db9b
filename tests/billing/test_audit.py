"""`vivix audit` / `GET /admin/v1/audit`: a system that only moved money through its
services passes; each way the tables could break a money promise is caught and named
with the offending rows (the rows are broken here by hand, as only a bug could)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, insert, select, update
from typer.testing import CliRunner

from tests.factories import AccountWithKey, account_with_key
from vivix.admin import service as admin
from vivix.cli import app
from vivix.generations import service as generations
from vivix.kit.clock import utcnow
from vivix.kit.egress import GuardedFetcher
from vivix.models import Account, Generation, LedgerEntry
from vivix.providers.base import OutputFile, RenderResult
from vivix.providers.registry import ProviderRegistry
from vivix.renderer.render import render_image
from vivix.runtime import Runtime
from vivix.worker import repository as queue
from vivix.worker.service import Failure, JobExecutor

TOKEN = "operator-token-for-the-audit-tests-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
IMAGE = {"model": "vivix-local-image", "prompt": "audited"}


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {"admin_token": TOKEN}


async def submit(client: httpx.AsyncClient, acct: AccountWithKey, **body: Any) -> str:
    response = await client.post("/api/v1/generate", json={**IMAGE, **body}, headers=acct.headers)
    assert response.status_code == 201, response.text
    return str(response.json()["generation_id"])


async def claim(runtime: Runtime) -> Generation:
    async with runtime.db.transaction() as session:
        claimed = await queue.claim_next_generation(
            session, "auditor", utcnow(), timedelta(seconds=60)
        )
    assert claimed is not None
    return claimed


async def every_kind_of_ending(runtime: Runtime, client: httpx.AsyncClient) -> AccountWithKey:
    """Completed, failed, canceled, pending and a free test render: all through the services."""
    acct = await account_with_key(runtime, credits=500, concurrent_jobs=10)
    executor = JobExecutor(runtime, ProviderRegistry({}), "auditor", GuardedFetcher())
    await submit(client, acct, resolution="2K")
    png = render_image("audited", width=2048, height=2048, seed=1)
    await executor.complete(await claim(runtime), RenderResult([OutputFile(png, "image/png")]))
    await submit(client, acct)
    await executor.fail(await claim(runtime), Failure("PROVIDER_ERROR", "upstream said no"))
    await generations.cancel(runtime, acct.id, await submit(client, acct))
    await submit(client, acct, prompt="still queued")
    test_key = (await admin.create_key(runtime, acct.name, test=True))["key"]
    free = AccountWithKey(acct.id, acct.name, test_key)
    await submit(client, free, prompt="free")
    return acct


async def test_money_moved_only_by_the_services_passes(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    await every_kind_of_ending(runtime, client)
    report = await admin.audit(runtime)
    assert report == {"ok": True, "checked": {"accounts": 1, "generations": 5}, "problems": []}
    response = await client.get("/admin/v1/audit", headers=ADMIN)
    assert response.status_code == 200
    assert response.json()["ok"] is True


Breakage = Callable[[Runtime, AccountWithKey], Awaitable[None]]


async def _run(runtime: Runtime, statement: Any) -> None:
    async with runtime.db.transaction() as session:
        await session.execute(statement)


async def _first(runtime: Runtime, status: str) -> str:
    async with runtime.db.read() as session:
        found = (
            await session.execute(
                select(Generation.id).where(Generation.status == status, ~Generation.is_test)
            )
        ).scalar_one()
    return str(found)


async def balance_off(runtime: Runtime, acct: AccountWithKey) -> None:
    await _run(runtime, update(Account).values(balance=Account.balance + 7))


async def held_off(runtime: Runtime, acct: AccountWithKey) -> None:
    await _run(runtime, update(Account).values(held=Account.held + 3, balance=Account.balance - 3))
    await _run(
        runtime,
        insert(LedgerEntry).values(
            account_id=acct.id, kind="adjustment", amount=-3, created_at=utcnow()
        ),
    )


async def release_missing(runtime: Runtime, acct: AccountWithKey) -> None:
    failed = await _first(runtime, "failed")
    await _run(
        runtime,
        delete(LedgerEntry).where(
            LedgerEntry.generation_id == failed, LedgerEntry.kind == "release"
        ),
    )


async def capture_on_a_failure(runtime: Runtime, acct: AccountWithKey) -> None:
    failed = await _first(runtime, "failed")
    await _run(
        runtime,
        insert(LedgerEntry).values(
            account_id=acct.id, kind="capture", amount=-1, generation_id=failed, created_at=utcnow()
        ),
    )


async def charged_above_estimate(runtime: Runtime, acct: AccountWithKey) -> None:
    done = await _first(runtime, "completed")
    await _run(runtime, update(Generation).where(Generation.id == done).values(credits_used=99))


async def active_jobs_off(runtime: Runtime, acct: AccountWithKey) -> None:
    await _run(runtime, update(Account).values(active_jobs=Account.active_jobs + 1))


async def open_generation_settled(runtime: Runtime, acct: AccountWithKey) -> None:
    pending = await _first(runtime, "pending")
    await _run(
        runtime,
        insert(LedgerEntry).values(
            account_id=acct.id, kind="release", amount=0, generation_id=pending, created_at=utcnow()
        ),
    )


async def orphan_entry(runtime: Runtime, acct: AccountWithKey) -> None:
    await _run(
        runtime,
        insert(LedgerEntry).values(
            account_id=acct.id,
            kind="capture",
            amount=0,
            generation_id="00000000-0000-7000-8000-000000000000",
            created_at=utcnow(),
        ),
    )


BREAKAGES: dict[str, tuple[Breakage, set[str]]] = {
    "balance": (balance_off, {"balance_equals_ledger"}),
    "held": (held_off, {"holds_match_open_generations"}),
    "release-missing": (release_missing, {"settled_exactly_once", "balance_equals_ledger"}),
    "capture-on-failure": (
        capture_on_a_failure,
        {"settled_exactly_once", "capture_equals_credits_used", "balance_equals_ledger"},
    ),
    "above-estimate": (
        charged_above_estimate,
        {"not_above_the_estimate", "capture_equals_credits_used"},
    ),
    "active-jobs": (active_jobs_off, {"active_jobs_match_open_generations"}),
    "open-settled": (open_generation_settled, {"open_generation_not_settled"}),
    "orphan": (orphan_entry, {"entry_without_generation"}),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
async def test_each_broken_promise_is_named_with_its_rows(
    runtime: Runtime, client: httpx.AsyncClient, breakage: str
) -> None:
    acct = await every_kind_of_ending(runtime, client)
    breaker, expected = BREAKAGES[breakage]
    await breaker(runtime, acct)
    report = await admin.audit(runtime)
    assert report["ok"] is False
    assert {p["check"] for p in report["problems"]} == expected, report["problems"]
    assert all(p["account_id"] == acct.id and p["detail"] for p in report["problems"])
    response = await client.get("/admin/v1/audit", headers=ADMIN)
    assert response.status_code == 409
    assert response.json()["problems"] == report["problems"]


def test_the_cli_exits_non_zero_listing_the_offending_rows(tmp_path: Path) -> None:
    env = {
        "VIVIX_DATA_DIR": str(tmp_path / "data"),
        "VIVIX_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
    }
    runner = CliRunner()

    def vivix(*args: str) -> Any:
        return runner.invoke(app, list(args), env=env, catch_exceptions=False)

    assert vivix("accounts", "create", "clean", "--credits", "50").exit_code == 0
    clean = vivix("audit")
    assert clean.exit_code == 0, clean.stdout
    assert "ok" in clean.stdout
    assert json.loads(vivix("audit", "--json").stdout)["ok"] is True

    import sqlite3

    with sqlite3.connect(tmp_path / "cli.db") as db:
        db.execute("UPDATE accounts SET balance = balance + 5")
    broken = vivix("audit")
    assert broken.exit_code == 1
    assert "balance_equals_ledger" in broken.stdout
    assert "balance 55 but the ledger sums to 50" in broken.stdout
    machine = vivix("audit", "--json")
    assert machine.exit_code == 1
    problems = json.loads(machine.stdout)["problems"]
    assert [(p["check"], p["account"]) for p in problems] == [("balance_equals_ledger", "clean")]
