"""The `eta_ms` arithmetic (generations.eta) on a given history, no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from vivix.generations.eta import History, Run, params_class

T0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def run(model: str, seconds: float, **params: object) -> Run:
    return Run(model, False, params, T0, T0 + timedelta(seconds=seconds))


def row(status: str, **fields: object) -> SimpleNamespace:
    values: dict[str, object] = {
        "model": "m",
        "generation_is_test": False,
        "params": {"duration": 5, "resolution": "720p"},
        "status": status,
        "started_at": None,
        "progress": None,
        "queue_position": None,
    }
    values.update(fields)
    return SimpleNamespace(**values)


def test_params_classes_bucket_durations_and_tell_test_runs_apart() -> None:
    assert params_class("m", False, {"duration": 4}) == params_class("m", False, {"duration": 5})
    assert params_class("m", False, {"duration": 5}) != params_class("m", False, {"duration": 6})
    assert params_class("m", False, {"duration": 50}) == params_class("m", False, {"duration": 90})
    assert params_class("m", True, {}) != params_class("m", False, {})
    assert params_class("m", False, {"resolution": "1K"}) != params_class(
        "m", False, {"resolution": "2K"}
    )
    assert params_class("m", False, {"number_results": 2}) != params_class("m", False, {})
    assert params_class("m", False, None) == params_class("m", False, {})


def test_pending_waits_for_slots_then_runs_for_the_median_of_its_class() -> None:
    runs = [run("m", s, duration=5, resolution="720p") for s in (10, 12, 50)]
    runs += [run("other", 2)]
    history = History.of(runs, processing=2, taken_at=0.0)
    assert history.run_ms[params_class("m", False, {"duration": 5, "resolution": "720p"})] == 12_000
    assert history.typical_ms == 10_000  # median_low of 2, 10, 12, 50 s
    # Position 3 with 2 slots busy: 3 × 10 s / 2 until it starts, then 12 s.
    assert history.eta_ms(row("pending", queue_position=3), T0) == 15_000 + 12_000
    assert history.eta_ms(row("pending", params={"duration": 10}), T0) is None
    assert history.eta_ms(row("completed"), T0) is None


def test_processing_counts_down_and_follows_its_own_pace_as_it_progresses() -> None:
    history = History.of([run("m", 20, duration=5, resolution="720p")], 1, 0.0)
    started = row("processing", started_at=T0)
    assert history.eta_ms(started, T0 + timedelta(seconds=5)) == 15_000
    assert history.eta_ms(started, T0 + timedelta(seconds=30)) == 0  # overdue
    # Half done after 5 s: its own pace says 5 s more, the history 15 s; weighted by 0.5.
    half = row("processing", started_at=T0, progress=0.5)
    assert history.eta_ms(half, T0 + timedelta(seconds=5)) == 10_000
    done = row("processing", started_at=T0, progress=1.0)
    assert history.eta_ms(done, T0 + timedelta(seconds=5)) == 0


def test_no_history_means_null() -> None:
    history = History.of([], processing=0, taken_at=0.0)
    assert history.typical_ms is None
    assert history.eta_ms(row("pending", queue_position=1), T0) is None
    assert history.eta_ms(row("processing", started_at=T0), T0) is None
