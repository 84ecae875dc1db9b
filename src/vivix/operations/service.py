"""Readiness: can this process serve traffic right now?"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING

from vivix.operations import repository

if TYPE_CHECKING:
    from vivix.runtime import Runtime

CHECK_TIMEOUT_S = 3.0


@cache
def expected_revision() -> str:
    from vivix.migrations import head_revision

    return head_revision()


@dataclass
class Readiness:
    ready: bool = True
    checks: dict[str, str] = field(default_factory=dict)

    def fail(self, name: str, reason: str) -> None:
        self.ready = False
        self.checks[name] = reason


async def check_readiness(runtime: Runtime) -> Readiness:
    """Database reachable and its schema at this version's head, storage writable, Redis
    reported. Redis down does not make a replica unready: rate limits then degrade to a
    reduced per-process limit by design (ARCHITECTURE.md invariant 6), and since every
    replica shares that Redis, failing readiness would take the whole API out at once."""
    result = Readiness()
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S), runtime.db.autocommit() as connection:
            revision = await repository.schema_revision(connection)
        result.checks["database"] = "ok"
        if revision == expected_revision():
            result.checks["migrations"] = "ok"
        else:
            result.fail(
                "migrations",
                f"schema at {revision or 'nothing'}, this version needs {expected_revision()}: "
                "run `vivix migrate`",
            )
    except Exception as exc:
        result.fail("database", f"error: {type(exc).__name__}")
        result.fail("migrations", "unknown: database unreachable")
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await runtime.storage.check_writable()
        result.checks["storage"] = "ok"
    except Exception as exc:
        result.fail("storage", f"not writable: {type(exc).__name__}: {str(exc)[:200]}")
    if runtime.limiter.uses_redis:
        result.checks["redis"] = (
            "ok" if await runtime.limiter.check_redis() else "degraded: per-process rate limits"
        )
    return result
