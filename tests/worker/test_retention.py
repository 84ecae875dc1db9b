"""Retention: the workers' pruning pass deletes the files of outputs past their window from
storage (really gone from disk), the generation then says so (`expired: true`, no URLs),
records past theirs lose the prompt, and no balance or ledger entry changes."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from tests.audit import assert_ledger_consistent
from tests.factories import account_with_key
from tests.worker.conftest import FAST_WORKER
from tests.worker.helpers import wait_for_status
from vivix.cli import app as cli
from vivix.kit.clock import utcnow
from vivix.kit.metrics import REGISTRY
from vivix.models import Account, Generation, LedgerEntry
from vivix.providers.registry import ProviderRegistry
from vivix.runtime import Runtime
from vivix.worker.runner import Worker

PROMPT = "retention test prompt, to be forgotten"


@pytest.fixture
def settings_overrides(tmp_path: Path) -> dict[str, object]:
    return {
        "worker": FAST_WORKER,
        "storage_url": (tmp_path / "outputs").as_uri(),
        "retention": {"outputs_days": 7, "generations_days": 30, "sweep_interval_seconds": 0.2},
    }


async def _money(runtime: Runtime) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    async with runtime.db.read() as session:
        accounts = (
            await session.execute(
                select(Account.id, Account.balance, Account.held, Account.spent_this_cycle)
            )
        ).all()
        entries = (
            await session.execute(
                select(LedgerEntry.id, LedgerEntry.kind, LedgerEntry.amount).order_by(
                    LedgerEntry.id
                )
            )
        ).all()
    return [tuple(a) for a in accounts], [tuple(e) for e in entries]


def _files(tmp_path: Path, body: dict[str, Any]) -> list[Path]:
    return [
        tmp_path / "outputs" / urlsplit(url).path.removeprefix("/files/")
        for url in body["output_urls"]
    ]


def _storage_usage(runtime: Runtime) -> dict[str, Any]:
    settings = runtime.settings
    env = {
        "VIVIX_DATA_DIR": str(settings.data_dir),
        "VIVIX_DATABASE_URL": settings.resolved_database_url,
        "VIVIX_STORAGE_URL": settings.resolved_storage_url,
        "VIVIX_SECRET_KEY": "test-secret",
    }
    result = CliRunner().invoke(cli, ["storage", "usage", "--json"], env=env)
    assert result.exit_code == 0, result.output
    usage: dict[str, Any] = json.loads(result.stdout)
    return usage


def _pruned(what: str) -> float:
    return REGISTRY.get_sample_value("vivix_retention_pruned_total", {"what": what}) or 0.0


async def _age(runtime: Runtime, generation_id: str, days: float) -> None:
    async with runtime.db.transaction() as session:
        await session.execute(
            update(Generation)
            .where(Generation.id == generation_id)
            .values(completed_at=utcnow() - timedelta(days=days))
        )


async def test_outputs_past_the_window_are_deleted_and_marked_and_money_is_untouched(
    runtime: Runtime, client: httpx.AsyncClient, tmp_path: Path, local_registry: ProviderRegistry
) -> None:
    acct = await account_with_key(runtime, credits=1000)
    ids = []
    for index in range(3):
        body = {"model": "vivix-local-image", "prompt": f"{PROMPT} {index}", "number_results": 2}
        response = await client.post("/api/v1/generate", json=body, headers=acct.headers)
        assert response.status_code == 201, response.text
        ids.append(response.json()["generation_id"])
    worker = Worker(runtime, concurrency=2, registry=local_registry)
    await worker.start()
    try:
        done = [await wait_for_status(client, g, acct.headers) for g in ids]
    finally:
        await worker.stop(grace_s=0)
    assert [b["status"] for b in done] == ["completed"] * 3
    files = [_files(tmp_path, body) for body in done]
    assert all(path.is_file() for paths in files for path in paths)
    usage = await asyncio.to_thread(_storage_usage, runtime)
    assert (usage["files"], usage["generations"]) == (6, 3)
    assert usage["by_account"][acct.name]["files"] == 6
    assert usage["bytes"] == sum(o["bytes"] for body in done for o in body["outputs"])

    recent, old, ancient = ids
    await _age(runtime, recent, 1)  # inside both windows
    await _age(runtime, old, 10)  # past the outputs' 7 days
    await _age(runtime, ancient, 40)  # past the records' 30 days too
    money_before = await _money(runtime)
    pruned_before = {what: _pruned(what) for what in ("outputs", "generations")}

    pruner = Worker(runtime, concurrency=1, registry=local_registry)  # prunes every 0.2 s
    await pruner.start()
    try:
        for _ in range(200):
            bodies = {
                g: (await client.get(f"/api/v1/generations/{g}", headers=acct.headers)).json()
                for g in ids
            }
            if bodies[old].get("expired") and bodies[ancient]["params"] == {}:
                break
            await asyncio.sleep(0.1)
    finally:
        await pruner.stop(grace_s=0)

    assert bodies[recent]["output_urls"] == done[0]["output_urls"]
    assert "expired" not in bodies[recent]
    assert all(path.is_file() for path in files[0])
    for generation_id, paths in ((old, files[1]), (ancient, files[2])):
        shown = bodies[generation_id]
        assert shown["status"] == "completed"
        assert shown["expired"] is True
        assert shown["expired_at"].endswith("Z")
        assert shown["output_url"] is None
        assert shown["output_urls"] == []
        assert shown["outputs"] == []
        assert shown["credits_used"] > 0  # what was charged still shows
        for path in paths:
            assert not path.exists(), path  # really deleted
            response = await client.get("/files/" + str(path.relative_to(tmp_path / "outputs")))
            assert response.status_code == 404
    assert bodies[old]["params"]["prompt"] == f"{PROMPT} 1"
    assert bodies[ancient]["params"] == {}
    assert bodies[ancient]["metadata"] == {}
    listed = (await client.get("/api/v1/generations", headers=acct.headers)).text
    assert f"{PROMPT} 2" not in listed

    assert {what: _pruned(what) - n for what, n in pruned_before.items()} == {
        "outputs": 2,
        "generations": 1,
    }
    assert await _money(runtime) == money_before  # balances and ledger untouched
    await assert_ledger_consistent(runtime)
    usage = await asyncio.to_thread(_storage_usage, runtime)
    assert (usage["files"], usage["generations"]) == (2, 1)
