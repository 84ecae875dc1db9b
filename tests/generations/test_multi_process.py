"""Two API processes (`vivix serve --no-worker`) on one database: admission and the
per-minute limit hold across replicas, not just inside one process.

On PostgreSQL + Redis (the scale-out setup) the account row lock and the shared Redis
counter do the work; on one SQLite file, BEGIN IMMEDIATE and busy_timeout serialize the
two processes' writers. The rate-limit scenario needs Redis, so it runs on PostgreSQL only.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.audit import assert_ledger_consistent, stored_counts
from tests.conftest import Backend, empty_tables, make_settings
from tests.factories import AccountWithKey, account_with_key
from tests.processes import ServerProcess, run_cli_together, running_servers, server_env
from vivix.admin import service as admin
from vivix.catalog import pricing
from vivix.catalog.params import validate_params
from vivix.migrations import head_revision
from vivix.runtime import Runtime, build_runtime, close_runtime

SECRET = "multi-process-test-secret"  # the servers and the test's runtime hash keys alike
IMAGE = {"model": "vivix-local-image", "prompt": "two lighthouses, one beam", "resolution": "1K"}
BURST = 50
HTTP_TIMEOUT_S = 30.0


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Module-scoped here, so both servers start once per backend for all tests below."""
    result: Backend = request.getfixturevalue(f"{request.param}_backend")
    return result


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {"secret_key": SECRET}


@pytest.fixture(scope="module")
def servers(
    backend: Backend, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[ServerProcess]]:
    data_dir = tmp_path_factory.mktemp(f"servers-{backend.name}")
    settings = {
        "DATABASE_URL": backend.database_url,
        "SECRET_KEY": SECRET,
        "DATA_DIR": str(data_dir),
        # Two replicas plus the test's own pool stay well inside PostgreSQL's 100 connections.
        "DB__POOL_SIZE": "5",
        "DB__MAX_OVERFLOW": "10",
    }
    if backend.redis_url:
        settings["REDIS_URL"] = backend.redis_url
        # These tests are about the budget the replicas share, not about a Redis outage
        # (tests/limits has those): on a loaded 2-core CI machine a Redis answer can come
        # later than the 0.5 s default, and the fallback would count per process.
        settings["REDIS__SOCKET_TIMEOUT_S"] = "5"
    # With an account in the database the servers skip the demo account and can start
    # together (each test's `runtime` empties the tables again before it runs).
    asyncio.run(create_placeholder_account(backend, data_dir))
    env = server_env(**settings)
    with running_servers(2, env, data_dir / "logs", database_has_accounts=True) as started:
        yield started


async def create_placeholder_account(backend: Backend, data_dir: Path) -> None:
    runtime = await build_runtime(make_settings(backend, data_dir, secret_key=SECRET))
    try:
        await empty_tables(runtime)
        await admin.create_account(runtime, "placeholder", "pro", 0)
    finally:
        await close_runtime(runtime)


def price_of(runtime: Runtime, body: dict[str, Any]) -> int:
    model = runtime.catalog.get(body["model"])
    assert model is not None
    return pricing.estimate(model.spec, validate_params(model.spec, body), None)


def code_of(response: httpx.Response) -> str:
    if response.status_code < 400:
        return str(response.status_code)
    return f"{response.status_code} {response.json()['error']}"


def assert_servers_quiet(servers: list[ServerProcess]) -> None:
    """No process logged an unexpected fault (a 500, a 'database is locked', a crash)."""
    for server in servers:
        assert server.process.poll() is None, f"{server.name} died:\n{server.output()}"
        output = server.output()
        assert "Traceback" not in output, output
        assert "unhandled_error" not in output, output


async def burst_across(
    servers: list[ServerProcess], acct: AccountWithKey, count: int = BURST
) -> dict[str, Counter[str]]:
    """`count` submits in flight at once, alternating between the processes; the outcome
    codes per process."""
    targets = [servers[i % len(servers)] for i in range(count)]
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S) as http:
        responses = await asyncio.gather(
            *(
                http.post(f"{server.base_url}/api/v1/generate", json=IMAGE, headers=acct.headers)
                for server in targets
            )
        )
    by_server: dict[str, Counter[str]] = {server.name: Counter() for server in servers}
    for server, response in zip(targets, responses, strict=True):
        by_server[server.name][code_of(response)] += 1
    return by_server


async def test_burst_over_two_processes_admits_only_what_the_credits_cover(
    runtime: Runtime, servers: list[ServerProcess]
) -> None:
    price = price_of(runtime, IMAGE)
    acct = await account_with_key(
        runtime, credits=3 * price, concurrent_jobs=1000, calls_per_minute=100_000
    )

    by_server = await burst_across(servers, acct)

    total = sum(by_server.values(), Counter())
    assert total == {"201": 3, "402 INSUFFICIENT_CREDITS": BURST - 3}, by_server
    assert all(counts.total() == BURST // 2 for counts in by_server.values())
    assert await stored_counts(runtime, acct.id) == (0, 3 * price, 3, 3)
    await assert_ledger_consistent(runtime)
    assert_servers_quiet(servers)


async def test_burst_over_two_processes_respects_the_concurrency_limit(
    runtime: Runtime, servers: list[ServerProcess]
) -> None:
    price = price_of(runtime, IMAGE)
    acct = await account_with_key(
        runtime, credits=100 * price, concurrent_jobs=3, calls_per_minute=100_000
    )

    by_server = await burst_across(servers, acct)

    total = sum(by_server.values(), Counter())
    assert total == {"201": 3, "429 CONCURRENCY_LIMIT": BURST - 3}, by_server
    assert await stored_counts(runtime, acct.id) == (97 * price, 3 * price, 3, 3)
    await assert_ledger_consistent(runtime)
    assert_servers_quiet(servers)


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_per_minute_limit_is_one_budget_shared_by_both_processes(
    runtime: Runtime, servers: list[ServerProcess]
) -> None:
    limit = 20
    price = price_of(runtime, IMAGE)
    acct = await account_with_key(
        runtime, credits=100 * price, concurrent_jobs=1000, calls_per_minute=limit
    )
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S, headers=acct.headers) as http:
        # One at a time, alternating processes: the count left steps down by exactly one
        # per call, whichever process answers, and both see the same window.
        sequential = []
        for i in range(10):
            response = await http.get(f"{servers[i % 2].base_url}/api/v1/credits")
            assert response.status_code == 200, response.text
            sequential.append(response)
        resets = [int(r.headers["x-ratelimit-reset"]) for r in sequential]
        # A new account's window opens at its first call, so all of this fits in it.
        assert resets[0] >= 50, resets
        assert resets == sorted(resets, reverse=True), resets
        assert [r.headers["x-ratelimit-limit"] for r in sequential] == [str(limit)] * 10
        assert [int(r.headers["x-ratelimit-remaining"]) for r in sequential] == list(
            range(limit - 1, limit - 11, -1)
        )

        # Then 50 at once, half reads and half submits, split over both processes: only the
        # 10 calls left in the window get through, all others are rate limited.
        burst = [
            http.get(f"{servers[i % 2].base_url}/api/v1/credits")
            if i % 4 < 2
            else http.post(f"{servers[i % 2].base_url}/api/v1/generate", json=IMAGE)
            for i in range(BURST)
        ]
        responses = await asyncio.gather(*burst)

    passed = [r for r in responses if r.status_code != 429]
    limited = [r for r in responses if r.status_code == 429]
    assert len(passed) == limit - 10, Counter(code_of(r) for r in responses)
    assert {code_of(r) for r in passed} <= {"200", "201"}
    for response in limited:
        body = response.json()
        assert body["error"] == "RATE_LIMIT"
        assert response.headers["retry-after"] == str(body["retry_after"])
        assert 1 <= body["retry_after"] <= 60
        assert response.headers["x-ratelimit-remaining"] == "0"
    # A rate-limited submit leaves no trace: generations exist only for the accepted ones.
    accepted = sum(r.status_code == 201 for r in responses)
    assert await stored_counts(runtime, acct.id) == (
        (100 - accepted) * price,
        accepted * price,
        accepted,
        accepted,
    )
    await assert_ledger_consistent(runtime)
    assert_servers_quiet(servers)


def test_processes_starting_together_on_a_new_sqlite_file_migrate_it_once(
    tmp_path: Path,
) -> None:
    # Replicas of the embedded setup migrate on start: the first takes the write lock and
    # builds the schema, the others wait for it and find nothing left to do.
    env = server_env(DATABASE_URL=f"sqlite:///{tmp_path / 'fresh.db'}", DATA_DIR=str(tmp_path))

    results = run_cli_together(["migrate", "--json"], env, count=3)

    outputs = "\n\n".join(out for _, out in results)
    assert [code for code, _ in results] == [0, 0, 0], outputs
    revisions = {json.loads(out[out.index("{") :])["revision"] for _, out in results}
    assert revisions == {head_revision()}
