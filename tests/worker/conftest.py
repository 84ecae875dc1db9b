from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.audit import assert_ledger_consistent
from vivix.providers.local.adapter import LocalAdapter
from vivix.providers.registry import ProviderRegistry
from vivix.runtime import Runtime
from vivix.worker.runner import Worker

FAST_WORKER = {
    "lease_seconds": 2.0,
    "heartbeat_seconds": 0.3,
    "poll_interval_seconds": 0.2,
    "retry_backoff_seconds": 0.1,
    "shutdown_grace_seconds": 1.0,
}


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {"worker": FAST_WORKER}


@pytest.fixture
async def runtime(runtime: Runtime) -> AsyncIterator[Runtime]:
    """The shared runtime, audited afterwards: every engine scenario ends with balances
    equal to the sums of their ledger entries (workers using it have stopped by then)."""
    yield runtime
    await assert_ledger_consistent(runtime)


@pytest.fixture(scope="session")
def local_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProviderRegistry]:
    """One render process pool for the whole session (start-up costs ~1 s)."""
    adapter = LocalAdapter(tmp_path_factory.mktemp("scratch"), processes=2)
    yield ProviderRegistry({"local": adapter})
    if adapter._pool is not None:
        adapter._pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
async def worker(runtime: Runtime, local_registry: ProviderRegistry) -> AsyncIterator[Worker]:
    running = Worker(runtime, concurrency=2, registry=local_registry)
    await running.start()
    try:
        yield running
    finally:
        await running.stop(grace_s=0)


def scratch(tmp_path: Path) -> Path:
    return tmp_path / "scratch"
