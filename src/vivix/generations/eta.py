"""`eta_ms` of running generations (API.md §5.3), from recent run times.

A run time is `completed_at − started_at` of a completed generation: from its first claim
to its final state (upstream queueing, rendering, storing the outputs). Runs are grouped
by params class, what moves a run's length: the model, live or test (test keys render
locally), the resolution, the duration bucket (≤5, ≤10, ≤20, ≤40 s, longer) and the
number of results. A class's run time is the median of its last RUNS_PER_CLASS runs among
the RECENT_RUNS newest completed generations.

- pending: queue_position × the median of all those runs / the generations processing now
  (at least 1: that is how fast slots free up), plus the class's run time.
- processing: the class's run time minus the time since the claim (never below 0); once
  the job reports progress p, blended with its own pace, elapsed × (1 − p) / p, weighted
  by p.
- null when the class has no run among the recent ones.

The history is one snapshot per process (two indexed reads), read again when older than
REFRESH_S, or SETTLE_S after this process ended a generation. The status read only looks
it up, so it costs the hot path nothing but a dict lookup.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from vivix.models import GenerationStatus

RECENT_RUNS = 500
RUNS_PER_CLASS = 20
REFRESH_S = 30.0
SETTLE_S = 1.0
DURATION_BUCKETS = (5, 10, 20, 40)

ParamsClass = tuple[str, bool, str, str, int]


@dataclass(frozen=True, slots=True)
class Run:
    """One completed generation, as the history reads it."""

    model: str
    is_test: bool
    params: Mapping[str, Any]
    started_at: datetime
    completed_at: datetime


def params_class(model: str, is_test: bool, params: Mapping[str, Any] | None) -> ParamsClass:
    params = params or {}
    duration = params.get("duration")
    bucket = ""
    if isinstance(duration, int | float) and not isinstance(duration, bool):
        bucket = next((f"≤{b}" for b in DURATION_BUCKETS if duration <= b), "long")
    results = params.get("number_results", 1)
    return (
        model,
        bool(is_test),
        str(params.get("resolution", "")),
        bucket,
        results if isinstance(results, int) and not isinstance(results, bool) else 1,
    )


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


@dataclass(frozen=True, slots=True)
class History:
    run_ms: dict[ParamsClass, int]  # per class: median run time
    typical_ms: int | None  # median over every recent run
    processing: int  # generations processing when it was read
    taken_at: float  # time.monotonic()

    @classmethod
    def of(cls, runs: Iterable[Run], processing: int, taken_at: float) -> History:
        by_class: dict[ParamsClass, list[int]] = {}
        every: list[int] = []
        for run in runs:  # newest first
            ms = _ms((run.completed_at - run.started_at).total_seconds())
            every.append(ms)
            times = by_class.setdefault(params_class(run.model, run.is_test, run.params), [])
            if len(times) < RUNS_PER_CLASS:
                times.append(ms)
        return cls(
            run_ms={key: int(statistics.median_low(times)) for key, times in by_class.items()},
            typical_ms=int(statistics.median_low(every)) if every else None,
            processing=processing,
            taken_at=taken_at,
        )

    def eta_ms(self, generation: Any, now: datetime) -> int | None:
        """For a `generations.repository` row (`model, generation_is_test, params, status,
        started_at, progress, queue_position`); None for other statuses than pending and
        processing."""
        key = params_class(generation.model, generation.generation_is_test, generation.params)
        run = self.run_ms.get(key)
        if run is None:
            return None
        if generation.status == GenerationStatus.PENDING:
            position = getattr(generation, "queue_position", None) or 1
            typical = self.typical_ms if self.typical_ms is not None else run
            return round(position * typical / max(1, self.processing)) + run
        if generation.status != GenerationStatus.PROCESSING:
            return None
        started = generation.started_at
        elapsed = _ms((now - started).total_seconds()) if started is not None else 0
        remaining = max(0, run - elapsed)
        progress = generation.progress
        if progress is None or progress <= 0:
            return remaining
        progress = min(1.0, float(progress))
        own_pace = elapsed * (1 - progress) / progress
        return round(progress * own_pace + (1 - progress) * remaining)


Loader = Callable[[], Awaitable[tuple[list[Run], int]]]


class RunTimes:
    """This process's history snapshot; `ended()` after it ends a generation brings the
    next refresh forward. Safe to share between the tasks of one event loop."""

    def __init__(self, refresh_s: float = REFRESH_S, settle_s: float = SETTLE_S) -> None:
        self.refresh_s = refresh_s
        self.settle_s = settle_s
        self._history: History | None = None
        self._ended = False
        self._lock: asyncio.Lock | None = None

    def ended(self) -> None:
        self._ended = True

    def _fresh(self, now: float) -> History | None:
        history = self._history
        if history is None:
            return None
        age = now - history.taken_at
        if age >= self.refresh_s or (self._ended and age >= self.settle_s):
            return None
        return history

    async def current(self, load: Loader) -> History:
        """The snapshot, read again first (one reader at a time) when it is stale."""
        history = self._fresh(time.monotonic())
        if history is not None:
            return history
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            history = self._fresh(time.monotonic())
            if history is None:
                self._ended = False
                runs, processing = await load()
                history = History.of(runs, processing, time.monotonic())
                self._history = history
        return history
