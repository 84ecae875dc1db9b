"""Gauges of shared state, read from the database when /metrics is scraped: every API
replica reports the same values (aggregate them with `max`, not `sum`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vivix.kit.clock import utcnow
from vivix.models.generation import ACTIVE_STATUSES
from vivix.operations import repository

if TYPE_CHECKING:
    from vivix.runtime import Runtime


class _Snapshot(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


async def shared_state_registry(runtime: Runtime) -> CollectorRegistry:
    async with runtime.db.autocommit() as connection:
        depth = await repository.queue_depth(connection)
        circuits = await repository.circuits(connection)
    queue = GaugeMetricFamily(
        "vivix_queue_depth",
        "Generations waiting (pending) or running (processing), by model",
        labels=["status", "model"],
    )
    # Every catalog model appears, at 0 when idle: an autoscaler's query always has a value.
    counts = {(s, m.slug): 0 for s in ACTIVE_STATUSES for m in runtime.catalog.all()}
    counts.update({(status, model): count for status, model, count in depth})
    for (status, model), count in sorted(counts.items()):
        queue.add_metric([status, model], count)
    now = utcnow()
    circuit_open = GaugeMetricFamily(
        "vivix_provider_circuit_open",
        "1 while a provider route's circuit is open (the route is skipped), else 0",
        labels=["provider", "route"],
    )
    failures = GaugeMetricFamily(
        "vivix_provider_consecutive_failures",
        "Consecutive failures of a provider route (resets on success)",
        labels=["provider", "route"],
    )
    for key, consecutive, open_until in circuits:
        provider, _, route = key.partition(":")
        is_open = open_until is not None and open_until > now
        circuit_open.add_metric([provider, route], 1 if is_open else 0)
        failures.add_metric([provider, route], consecutive)
    registry = CollectorRegistry()
    registry.register(_Snapshot([queue, circuit_open, failures]))
    return registry
