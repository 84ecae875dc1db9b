"""Per-route circuit breakers, stored in the database so every process agrees.

`failure_threshold` consecutive failures (retriable errors after their retries, or fatal
errors) open a route's circuit for `cooldown_seconds`: workers skip it and move to the
next mirror, and admission answers 503 PROVIDER_DOWN when every route is open. After the
cooldown the route is tried again (half-open); one more failure re-opens it at once, a
success closes it. Rejections of the client's input are not the provider's fault and
don't count. Admission reads a per-process snapshot refreshed every second (one read for
every caller; while it runs they go on with the last one).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from vivix.kit.clock import utcnow
from vivix.kit.db import Database
from vivix.models import ProviderCircuit
from vivix.settings import CircuitSettings

SNAPSHOT_TTL_S = 1.0
# A constant: `Database.reader()` compiles each statement once, by identity.
_OPEN_OR_HALF_OPEN = select(ProviderCircuit.route, ProviderCircuit.open_until).where(
    ProviderCircuit.open_until.is_not(None)
)


def route_key(provider: str, upstream_model: str) -> str:
    return f"{provider}:{upstream_model}"[:200]


@dataclass(frozen=True, slots=True)
class CircuitState:
    open_until: datetime | None

    def is_open(self, now: datetime) -> bool:
        return self.open_until is not None and self.open_until > now


class CircuitBreakers:
    def __init__(self, db: Database, settings: CircuitSettings) -> None:
        self.db = db
        self.settings = settings
        self._snapshot: dict[str, CircuitState] = {}
        self._snapshot_at = float("-inf")
        # The one read of the table in flight, and which snapshot it is for (a read
        # started before `forget_snapshot` must not be taken as current).
        self._reading: asyncio.Future[None] | None = None
        self._epoch = 0

    async def open_routes(self) -> dict[str, datetime]:
        """Routes whose circuit is open now, with when they may close (cached ~1 s).

        One read refreshes the snapshot for every caller: when it is due, callers go on
        with the last snapshot while the read runs, instead of each reading the table
        (at 64 concurrent submits, every one arriving in the read's ~10-200 ms read it
        again: the submit's p99). After `forget_snapshot` (a circuit of this process
        changed) or before the first read, callers wait for a read started after it."""
        if time.monotonic() - self._snapshot_at > SNAPSHOT_TTL_S:
            if self._reading is None:
                self._reading = asyncio.ensure_future(self._read(self._epoch))
                # A failed read nobody waited for is retried by the next call.
                self._reading.add_done_callback(lambda read: read.cancelled() or read.exception())
            if self._snapshot_at == float("-inf"):
                await asyncio.shield(self._reading)
        now = utcnow()
        return {
            route: state.open_until
            for route, state in self._snapshot.items()
            if state.open_until is not None and state.is_open(now)
        }

    async def _read(self, epoch: int) -> None:
        try:
            async with self.db.reader() as connection:
                rows = (await connection.execute(_OPEN_OR_HALF_OPEN)).all()
            if epoch == self._epoch:
                self._snapshot = {row.route: CircuitState(row.open_until) for row in rows}
                self._snapshot_at = time.monotonic()
        finally:
            if epoch == self._epoch:
                self._reading = None

    def forget_snapshot(self) -> None:
        self._snapshot_at = float("-inf")
        self._epoch += 1
        self._reading = None

    async def record_failure(self, route: str, error: str) -> bool:
        """Count a failure; returns True when this opened the circuit."""
        now = utcnow()
        async with self.db.transaction() as session:
            circuit = await _lock(session, route, now)
            circuit.consecutive_failures += 1
            circuit.last_error = error[:500]
            circuit.updated_at = now
            opened = circuit.consecutive_failures >= self.settings.failure_threshold
            if opened:
                circuit.open_until = now + timedelta(seconds=self.settings.cooldown_seconds)
        self.forget_snapshot()
        return opened

    async def record_success(self, route: str) -> None:
        async with self.db.read() as session:
            failures = (
                await session.execute(
                    select(ProviderCircuit.consecutive_failures).where(
                        ProviderCircuit.route == route
                    )
                )
            ).scalar_one_or_none()
        if not failures:
            return  # already closed: no write on the hot path
        async with self.db.transaction() as session:
            circuit = (
                await session.execute(
                    select(ProviderCircuit).where(ProviderCircuit.route == route).with_for_update()
                )
            ).scalar_one_or_none()
            if circuit is None or (
                circuit.consecutive_failures == 0 and circuit.open_until is None
            ):
                return
            circuit.consecutive_failures = 0
            circuit.open_until = None
            circuit.updated_at = utcnow()
        self.forget_snapshot()


async def _lock(session: AsyncSession, route: str, now: datetime) -> ProviderCircuit:
    """The route's row, created if missing (racing creators: one insert wins), locked."""
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    await session.execute(
        insert(ProviderCircuit)
        .values(route=route, consecutive_failures=0, open_until=None, updated_at=now)
        .on_conflict_do_nothing(index_elements=["route"])
    )
    return (
        await session.execute(
            select(ProviderCircuit)
            .where(ProviderCircuit.route == route)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).scalar_one()
