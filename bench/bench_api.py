"""API benchmarks: submit (POST /api/v1/generate) and status read (GET
/api/v1/generations/{id}), each as a ratio of Vivix's throughput to a bare baseline app's
(bench/baseline_app.py: Starlette and the database driver, nothing of Vivix's) on the same
uvicorn, database and load, in one run.

    python -m bench.bench_api [--db sqlite|postgres|both] [--seconds N] [--concurrency N …] [--json]
    python -m bench.bench_api --profile submit|read [--db sqlite|postgres]

Targets (issue 9): submit >= 25 % of the bare insert, status read >= 35 % of the bare
select, submit p99 at 64 connections <= 100 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx

from bench.common import (
    BenchError,
    HttpCall,
    LoadResult,
    NextCall,
    PostgresUnavailable,
    ServerProcess,
    bench_postgres_admin_url,
    clean_environment,
    cycling,
    event_loop_runner,
    free_port,
    fresh_postgres_database,
    machine_description,
    new_client,
    postgres_backend_pids,
    run_load,
)

SCENARIOS = ("read", "submit")  # reads first: they run on a queue of only READ_SET_SIZE rows
TARGET_RATIO: dict[str, float | None] = {"submit": 0.25, "read": 0.35, "healthz": None}
# Submit p99 at this many connections or more, milliseconds.
TARGET_SUBMIT_P99_MS = 100.0
TARGET_P99_CONCURRENCY = 64
READ_SET_SIZE = 256
SUBMIT_BODY = json.dumps({"model": "vivix-local-image", "prompt": "bench"}).encode()
SECRET_KEY = "vivix-bench-secret"
BENCH_ACCOUNT = "bench"
# Ample, so that neither credits nor limits ever answer for the benchmark.
BENCH_CREDITS = 100_000_000


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Options:
    databases: tuple[str, ...]
    seconds: float
    concurrencies: tuple[int, ...]
    warmup: float
    rounds: int
    client: str = "raw"
    accounts: int = 1
    scenarios: tuple[str, ...] = SCENARIOS


# --- databases ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DatabaseUrls:
    vivix: str
    baseline: str
    postgres_name: str | None = None  # to find its backends, whose CPU is counted too

    def backend_pids(self) -> list[int]:
        return postgres_backend_pids(self.postgres_name) if self.postgres_name else []


def _asyncpg_url(url: str) -> str:
    return "postgresql+asyncpg://" + url.split("://", 1)[1]


def _plain_url(url: str) -> str:
    """The URL without SQLAlchemy's +driver, for the baseline's own driver."""
    scheme, rest = url.split("://", 1)
    return scheme.split("+", 1)[0] + "://" + rest


@contextlib.asynccontextmanager
async def bench_database(kind: str, workdir: Path) -> AsyncIterator[DatabaseUrls]:
    """A fresh database of `kind` for one run, migrated to Vivix's schema, removed after.
    SQLite: two files in `workdir` (Vivix's and the baseline's, same pragmas). PostgreSQL:
    one new database on the server (VIVIX_BENCH_POSTGRES_URL), both apps in it."""
    from vivix.migrations import upgrade_to_head

    if kind == "sqlite":
        urls = DatabaseUrls(
            vivix=f"sqlite+aiosqlite:///{workdir / 'vivix.db'}",
            baseline=f"sqlite:///{workdir / 'baseline.db'}",
        )
        await upgrade_to_head(urls.vivix)
        yield urls
        return
    async with fresh_postgres_database(bench_postgres_admin_url(), "vivix_bench") as url:
        database = _asyncpg_url(url)
        await upgrade_to_head(database)
        yield DatabaseUrls(
            vivix=database, baseline=_plain_url(url), postgres_name=url.rsplit("/", 1)[1]
        )


# --- the two servers ----------------------------------------------------------------------


def _vivix_settings(workdir: Path, database_url: str) -> dict[str, str]:
    return {
        "VIVIX_DATA_DIR": str(workdir / "vivix-data"),
        "VIVIX_DATABASE_URL": database_url,
        "VIVIX_SECRET_KEY": SECRET_KEY,
        "VIVIX_LOG_LEVEL": "warning",
    }


async def create_bench_keys(workdir: Path, database_url: str, accounts: int) -> list[str]:
    """Accounts whose credits and limits never bind, and a live key for each. Done in
    process with the operator service (what the `vivix accounts/keys` commands call),
    before the server starts."""
    from vivix.admin import service as admin
    from vivix.kit.bounds import MAX_CALLS_PER_MINUTE, MAX_CONCURRENT_JOBS
    from vivix.runtime import build_runtime, close_runtime
    from vivix.settings import load_settings

    settings = load_settings(
        data_dir=workdir / "vivix-data",
        database_url=database_url,
        secret_key=SECRET_KEY,
        redis_url=None,
    )
    runtime = await build_runtime(settings)
    keys = []
    try:
        for index in range(accounts):
            name = f"{BENCH_ACCOUNT}-{index}"
            await admin.create_account(runtime, name, "pro", BENCH_CREDITS)
            await admin.update_account(
                runtime,
                name,
                calls_per_minute=MAX_CALLS_PER_MINUTE,
                concurrent_jobs=MAX_CONCURRENT_JOBS,
            )
            keys.append((await admin.create_key(runtime, name, name="bench"))["key"])
    finally:
        await close_runtime(runtime)
    return keys


@dataclass
class ServerUnderTest:
    """A server and the calls that make up each scenario on it. With several API keys
    (`--accounts`), calls take turns between them; the baseline ignores the key but gets
    the same headers, so request sizes match."""

    server: ServerProcess
    submit_path: str
    read_path: Callable[[str], str]
    id_field: str
    api_keys: list[str]
    db_pids: Callable[[], list[int]] | None = None
    read_calls: list[HttpCall] | None = None

    def _headers(self, key: str, *, body: bool = False) -> dict[str, str]:
        headers = {"authorization": f"Bearer {key}"}
        if body:
            headers["content-type"] = "application/json"
        return headers

    def submit_calls(self) -> list[HttpCall]:
        return [
            HttpCall("POST", self.submit_path, SUBMIT_BODY, self._headers(k, body=True))
            for k in self.api_keys
        ]

    def next_call(self, scenario: str) -> NextCall:
        if scenario == "healthz":
            return cycling([HttpCall("GET", "/healthz", headers=self._headers(self.api_keys[0]))])
        if scenario == "submit":
            return cycling(self.submit_calls())
        assert self.read_calls is not None, "seed_reads() first"
        return cycling(self.read_calls)

    async def seed_reads(self, count: int) -> None:
        """Submit `count` rows through the server's own API (keys taking turns); the read
        scenario cycles through them, each read with the key that created the row."""
        self.read_calls = []
        submits = self.submit_calls()
        async with new_client(self.server.base_url, 8) as client:
            for index in range(count):
                call = submits[index % len(submits)]
                response = await client.request(
                    call.method, call.path, content=call.body, headers=call.headers
                )
                if response.status_code != 201:
                    raise BenchError(
                        f"seeding {self.server.name}: {response.status_code} {response.text[:300]}"
                    )
                row_id = response.json()[self.id_field]
                key = self.api_keys[index % len(self.api_keys)]
                self.read_calls.append(
                    HttpCall("GET", self.read_path(row_id), headers=self._headers(key))
                )


def _servers(
    workdir: Path, urls: DatabaseUrls, api_keys: list[str]
) -> tuple[ServerUnderTest, ServerUnderTest]:
    baseline_port, vivix_port = free_port(), free_port()
    baseline_argv = ["-m", "bench.baseline_app", "--database-url", urls.baseline]
    baseline = ServerUnderTest(
        server=ServerProcess(
            "baseline",
            [sys.executable, *baseline_argv, "--port", str(baseline_port)],
            env=clean_environment(),
            port=baseline_port,
            log_path=workdir / "baseline.log",
        ),
        submit_path="/rows",
        read_path=lambda i: f"/rows/{i}",
        id_field="id",
        api_keys=api_keys,
        db_pids=urls.backend_pids,
    )
    vivix = ServerUnderTest(
        server=ServerProcess(
            "vivix",
            [sys.executable, "-m", "vivix", "serve", "--no-worker", "--port", str(vivix_port)],
            env=clean_environment(**_vivix_settings(workdir, urls.vivix)),
            port=vivix_port,
            log_path=workdir / "vivix.log",
        ),
        submit_path="/api/v1/generate",
        read_path=lambda i: f"/api/v1/generations/{i}",
        id_field="generation_id",
        api_keys=api_keys,
        db_pids=urls.backend_pids,
    )
    return baseline, vivix


@contextlib.asynccontextmanager
async def running(*servers: ServerUnderTest) -> AsyncIterator[None]:
    import asyncio

    try:
        for s in servers:
            s.server.start()
        await asyncio.gather(*(s.server.wait_ready() for s in servers))
        yield
    finally:
        for s in servers:
            s.server.stop()


# --- measurement --------------------------------------------------------------------------


@dataclass
class Comparison:
    scenario: str
    database: str
    concurrency: int
    baseline: LoadResult
    vivix: LoadResult
    # Vivix's admission batches during its submit windows (from /metrics): count, sum and
    # the histogram's cumulative buckets.
    batches: dict[str, Any] | None = None

    @property
    def ratio(self) -> float:
        return self.vivix.rps / self.baseline.rps if self.baseline.rps else 0.0

    @property
    def cpu_ratio(self) -> float | None:
        """Baseline CPU per request ÷ Vivix's: the same comparison as `ratio`, made with
        what each server spent rather than what it achieved (less sensitive to other load
        on the machine; on PostgreSQL the database's own CPU is not in it)."""
        base, own = self.baseline.cpu_us_per_request, self.vivix.cpu_us_per_request
        return None if base is None or not own else base / own

    @property
    def target(self) -> float | None:
        return TARGET_RATIO[self.scenario]

    @property
    def p99_target_ms(self) -> float | None:
        if self.scenario == "submit" and self.concurrency >= TARGET_P99_CONCURRENCY:
            return TARGET_SUBMIT_P99_MS
        return None

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        p99 = self.p99_target_ms
        return self.ratio >= self.target and (p99 is None or self.vivix.latency_ms(99) <= p99)

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "database": self.database,
            "concurrency": self.concurrency,
            "baseline": self.baseline.summary(),
            "vivix": self.vivix.summary(),
            "ratio": round(self.ratio, 3),
            "cpu_ratio": None if self.cpu_ratio is None else round(self.cpu_ratio, 3),
            "target": self.target,
            "p99_target_ms": self.p99_target_ms,
            "met": self.met,
            "admission_batches": self.batches,
        }


async def admission_batches(vivix: ServerUnderTest) -> dict[str, float]:
    """Vivix's `vivix_admission_batch_size` histogram as scraped now (count, sum, buckets)."""
    async with httpx.AsyncClient(base_url=vivix.server.base_url) as client:
        text = (await client.get("/metrics")).text
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("vivix_admission_batch_size_"):
            name, value = line.rsplit(" ", 1)
            found[name.removeprefix("vivix_admission_batch_size_")] = float(value)
    return found


def _batch_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    delta = {name: after.get(name, 0.0) - before.get(name, 0.0) for name in after}
    count, total = delta.pop("count", 0.0), delta.pop("sum", 0.0)
    delta.pop("created", None)
    buckets = {
        name.split('"')[1]: int(value) for name, value in delta.items() if name.startswith("bucket")
    }
    return {
        "batches": int(count),
        "admissions": int(total),
        "mean": round(total / count, 2) if count else None,
        "cumulative_buckets": buckets,
    }


async def compare(
    scenario: str,
    database: str,
    baseline: ServerUnderTest,
    vivix: ServerUnderTest,
    opts: Options,
    concurrency: int,
    seconds: float | None = None,
) -> Comparison:
    """Alternate the two servers in `rounds` windows (ABBA…) so drift in the machine's
    load hits both about equally."""
    totals = {"baseline": LoadResult(), "vivix": LoadResult()}
    batches_before = await admission_batches(vivix)
    calls = {"baseline": baseline.next_call(scenario), "vivix": vivix.next_call(scenario)}
    targets = {"baseline": baseline, "vivix": vivix}
    for round_index in range(opts.rounds):
        order = ("baseline", "vivix") if round_index % 2 == 0 else ("vivix", "baseline")
        for name in order:
            target = targets[name]
            result = await run_load(
                target.server.base_url,
                calls[name],
                concurrency=concurrency,
                seconds=(seconds or opts.seconds) / opts.rounds,
                warmup=opts.warmup,
                server_pid=target.server.pid,
                db_pids=target.db_pids,
                client=opts.client,
            )
            target.server.check_alive()
            totals[name] = totals[name].merge(result)
    comparison = Comparison(scenario, database, concurrency, totals["baseline"], totals["vivix"])
    if scenario == "submit":
        # Includes the warm-ups' admissions: the batch sizes the load produced.
        comparison.batches = _batch_delta(batches_before, await admission_batches(vivix))
    log(
        f"  {scenario:<6} {database:<8} c={concurrency:<3} baseline "
        f"{comparison.baseline.rps:7.0f} req/s   vivix {comparison.vivix.rps:7.0f} req/s"
        f"   ratio {comparison.ratio:.2f}   vivix p99 {comparison.vivix.latency_ms(99):.0f} ms"
        + (f"   batch mean {comparison.batches['mean']}" if comparison.batches else "")
    )
    return comparison


async def bench_one_database(kind: str, opts: Options, report: dict[str, Any]) -> list[Comparison]:
    with tempfile.TemporaryDirectory(prefix=f"vivix-bench-{kind}-") as tmp:
        workdir = Path(tmp)
        async with bench_database(kind, workdir) as urls:
            api_keys = await create_bench_keys(workdir, urls.vivix, opts.accounts)
            baseline, vivix = _servers(workdir, urls, api_keys)
            async with running(baseline, vivix):
                await baseline.seed_reads(READ_SET_SIZE)
                await vivix.seed_reads(READ_SET_SIZE)
                comparisons = []
                if not report["results"]:
                    # Once per run, no database: the HTTP stack alone (FastAPI and Vivix's
                    # middlewares vs plain Starlette), and the load generator's ceiling.
                    comparisons.append(
                        await compare(
                            "healthz",
                            "-",
                            baseline,
                            vivix,
                            opts,
                            max(opts.concurrencies),
                            opts.seconds / 2,
                        )
                    )
                for scenario in opts.scenarios:
                    for concurrency in opts.concurrencies:
                        comparisons.append(
                            await compare(scenario, kind, baseline, vivix, opts, concurrency)
                        )
                return comparisons


async def bench_all(opts: Options) -> dict[str, Any]:
    report: dict[str, Any] = {
        "benchmark": "api",
        "machine": machine_description(),
        "settings": {
            "concurrency": list(opts.concurrencies),
            "seconds_per_measurement": opts.seconds,
            "rounds": opts.rounds,
            "warmup_seconds_per_round": opts.warmup,
            "read_set_size": READ_SET_SIZE,
            "client": opts.client,
            "accounts": opts.accounts,
        },
        "targets": {
            **TARGET_RATIO,
            "submit_p99_ms": TARGET_SUBMIT_P99_MS,
            "submit_p99_at_concurrency": TARGET_P99_CONCURRENCY,
        },
        "results": [],
        "skipped": [],
    }
    for kind in opts.databases:
        log(f"{kind}:")
        try:
            comparisons = await bench_one_database(kind, opts, report)
        except PostgresUnavailable as exc:
            log(f"  skipped: {exc}")
            report["skipped"].append({"database": kind, "reason": str(exc)})
            continue
        report["results"] += [c.as_dict() for c in comparisons]
    report["machine"]["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    return report


# --- output -------------------------------------------------------------------------------


def render_table(report: dict[str, Any]) -> str:
    header = (
        f"{'scenario':<8} {'db':<9} {'conn':>4} │ {'baseline':>9} {'p50':>6} {'p99':>6} {'cpu':>6} │"
        f" {'vivix':>9} {'p50':>6} {'p99':>6} {'cpu':>6} │ {'ratio':>6} {'target':>6} {'met':>4}"
        f" │ {'cpu':>6}"
    )
    units = (
        f"{'':<8} {'':<9} {'':>4} │ {'req/s':>9} {'ms':>6} {'ms':>6} {'µs/rq':>6} │"
        f" {'req/s':>9} {'ms':>6} {'ms':>6} {'µs/rq':>6} │ {'':>6} {'':>6} {'':>4} │ {'ratio':>6}"
    )
    lines = [header, units, "─" * len(header)]

    def number(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    for row in report["results"]:
        b, v = row["baseline"], row["vivix"]
        target = "-" if row["target"] is None else "≥" + format(row["target"], ".0%")
        met = {None: "-", True: "yes", False: "NO"}[row["met"]]
        batches = row["admission_batches"]
        lines.append(
            f"{row['scenario']:<8} {row['database']:<9} {row['concurrency']:>4} │ {b['rps']:>9.0f} {b['p50_ms']:>6.1f}"
            f" {b['p99_ms']:>6.1f} {number(b['cpu_us_per_request'], '.0f'):>6} │"
            f" {v['rps']:>9.0f} {v['p50_ms']:>6.1f} {v['p99_ms']:>6.1f}"
            f" {number(v['cpu_us_per_request'], '.0f'):>6} │ {row['ratio']:>6.0%}"
            f" {target:>6} {met:>4} │ {number(row['cpu_ratio'], '.0%'):>6}"
            + (f"  batches: mean {batches['mean']}, n {batches['batches']}" if batches else "")
        )
    for skipped in report["skipped"]:
        lines.append(f"{skipped['database']}: skipped ({skipped['reason']})")
    m = report["machine"]
    lines += [
        "ratio = vivix req/s ÷ baseline req/s; cpu = CPU per request of the server process and"
        " (PostgreSQL) its database backends; cpu ratio = baseline cpu ÷ vivix cpu",
        f"met: ratio ≥ target, and for submit at ≥ {TARGET_P99_CONCURRENCY} connections vivix p99"
        f" ≤ {TARGET_SUBMIT_P99_MS:.0f} ms; batches: vivix's admission batch sizes (/metrics)",
        f"concurrency {report['settings']['concurrency']}, "
        f"{report['settings']['seconds_per_measurement']:g} s per figure in "
        f"{report['settings']['rounds']} alternating windows, {report['settings']['client']}"
        f" client; {m['cpus']} CPUs, load average {m['loadavg_1m_at_start']} →"
        f" {m['loadavg_1m_at_end']}",
    ]
    return "\n".join(lines)


# --- profiling ----------------------------------------------------------------------------
#
# `--profile SCENARIO` runs both servers once more behind ProfileProbe, an ASGI wrapper that
# answers /_bench/profile/start?mode=… and /_bench/profile/stop. Two windows per server:
# "spans" times Vivix's steps (wall clock, so waits for locks, the database and a busy
# event loop show up) and counts SQL round trips; "cprofile" runs the event-loop thread
# under cProfile (CPU by package and function; it slows the server down, so its absolute
# numbers are inflated, its shares are what to read).

PROFILE_CONTROL = "/_bench/profile/"

# (label, module, attribute): async callables timed in the spans window; labels are
# indented by how they nest on the request path.
VIVIX_SPANS = (
    ("authorize (auth, cycle, rate limit)", "vivix.generations.endpoints", "authorize"),
    ("  get_caller", "vivix.accounts.repository", "get_caller"),
    ("pass_gate (cycle, rate limit, tier)", "vivix.generations.endpoints", "pass_gate"),
    ("  RateLimiter.hit", "vivix.limits.service", "RateLimiter.hit"),
    ("read_json_object", "vivix.generations.endpoints", "read_json_object"),
    ("service.submit", "vivix.generations.service", "submit"),
    ("  PostgresLedger.hold (PostgreSQL)", "vivix.billing.ledger", "PostgresLedger.hold"),
    ("  run_sqlite_write (SQLite)", "vivix.kit.db", "Database.run_sqlite_write"),
    ("  notify_enqueued", "vivix.runtime", "Runtime.notify_enqueued"),
    ("read_with_caller", "vivix.generations.repository", "read_with_caller"),
    # Database.reader()'s statements (the caller lookup, the status read) on the bare
    # driver: SQLAlchemy's statement events don't see them, these spans count them.
    ("driver read: SqliteLoopReader.execute", "vivix.kit.db", "SqliteLoopReader.execute"),
    ("driver read: AsyncpgReader.execute", "vivix.kit.db", "AsyncpgReader.execute"),
)
COMMON_SPANS = (
    ("sqlite write lock wait", "", ""),
    ("AsyncSession.flush", "sqlalchemy.ext.asyncio.session", "AsyncSession.flush"),
    (
        "session.begin() exit (commit)",
        "sqlalchemy.ext.asyncio.session",
        "AsyncSessionTransaction.__aexit__",
    ),
    ("AsyncSession.close", "sqlalchemy.ext.asyncio.session", "AsyncSession.close"),
)


class ProfileProbe:
    """Wraps a server's ASGI app in the profiled server process (see the section note)."""

    def __init__(self, app: Any, span_targets: tuple[tuple[str, str, str], ...]) -> None:
        from collections import Counter, defaultdict

        self.app = app
        self.mode: str | None = None
        self.requests = 0
        self.events: Counter[str] = Counter()
        self.spans: defaultdict[str, list[float]] = defaultdict(lambda: [0, 0.0])
        self.profiler: Any = None
        self._swaps: list[tuple[Any, str, Any, Any]] = []
        self._install_sql_counters()
        for label, module, attribute in span_targets:
            if module:
                self._time(label, module, attribute)
        self._count_aiosqlite_round_trips()

    def _time(self, label: str, module_name: str, attribute: str) -> None:
        """Prepare a timing wrapper for one async callable; it is swapped in only for the
        spans window so it costs nothing in the others."""
        import functools
        import importlib
        import time

        owner: Any = importlib.import_module(module_name)
        *path, name = attribute.split(".")
        for part in path:
            owner = getattr(owner, part)
        original = getattr(owner, name)

        @functools.wraps(original)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                span = self.spans[label]
                span[0] += 1
                span[1] += time.perf_counter() - started

        self._swaps.append((owner, name, original, timed))

    def _swap_timers(self, on: bool) -> None:
        for owner, name, original, timed in self._swaps:
            setattr(owner, name, timed if on else original)

    def _install_sql_counters(self) -> None:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine
        from sqlalchemy.pool import Pool

        def statement(conn: Any, cursor: Any, text: str, *args: Any) -> None:
            self.count(" ".join(text.split())[:100])

        def begin(conn: Any) -> None:
            # On SQLite the BEGIN is itself a statement (kit/db.py); elsewhere the driver's.
            if conn.dialect.name != "sqlite":
                self.count("(begin)")

        event.listen(Engine, "before_cursor_execute", statement)
        event.listen(Engine, "begin", begin)
        event.listen(Engine, "commit", lambda conn: self.count("(commit)"))
        event.listen(Engine, "rollback", lambda conn: self.count("(rollback)"))
        event.listen(Pool, "checkout", lambda *args: self.count("(pool checkout)"))

    def _count_aiosqlite_round_trips(self) -> None:
        # Every aiosqlite call (execute, fetch, commit, close…) is a hop to its thread.
        import aiosqlite.core

        original: Any = aiosqlite.core.Connection._execute

        async def counted(connection: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
            self.count("[aiosqlite thread round trip]")
            return await original(connection, fn, *args, **kwargs)

        self._swaps.append((aiosqlite.core.Connection, "_execute", original, counted))

    def count(self, name: str) -> None:
        if self.mode is not None:
            self.events[name] += 1

    def _time_write_lock(self) -> None:
        import asyncio
        import time

        state = self.app.state
        db = state.runtime.db if hasattr(state, "runtime") else None
        lock = getattr(db, "_sqlite_write_lock", None)
        if lock is None or getattr(lock, "probed", False):
            return
        probe = self

        class TimedLock(asyncio.Lock):
            probed = True

            async def acquire(self) -> Literal[True]:
                if probe.mode != "spans":
                    return await super().acquire()
                started = time.perf_counter()
                try:
                    return await super().acquire()
                finally:
                    span = probe.spans["sqlite write lock wait"]
                    span[0] += 1
                    span[1] += time.perf_counter() - started

        db._sqlite_write_lock = TimedLock()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        import time

        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"].startswith(PROFILE_CONTROL):
            await self._control(scope, send)
            return
        if self.mode is None:
            await self.app(scope, receive, send)
            return
        self.requests += 1
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            if self.mode == "spans":
                span = self.spans["request (whole ASGI app)"]
                span[0] += 1
                span[1] += time.perf_counter() - started

    async def _control(self, scope: Any, send: Any) -> None:
        import cProfile
        import time
        from urllib.parse import parse_qs

        action = scope["path"][len(PROFILE_CONTROL) :]
        body: dict[str, Any] = {}
        if action == "start":
            self._time_write_lock()
            self.requests = 0
            self.events.clear()
            self.spans.clear()
            self.mode = parse_qs(scope["query_string"].decode()).get("mode", ["spans"])[0]
            self._swap_timers(self.mode == "spans")
            if self.mode == "cprofile":
                # CPU time of the loop thread, not wall time: on a shared machine a
                # descheduled process would otherwise bill its wait to whatever ran.
                self.profiler = cProfile.Profile(time.thread_time)
                self.profiler.enable()
        elif action == "stop":
            if self.profiler is not None:
                self.profiler.disable()
            self._swap_timers(False)
            body = {
                "mode": self.mode,
                "requests": self.requests,
                "events": dict(self.events),
                "spans": {k: v for k, v in self.spans.items()},
            }
            if self.profiler is not None:
                path = os.environ["VIVIX_BENCH_PROFILE_OUT"]
                self.profiler.dump_stats(path)
                body["stats"] = path
            self.mode, self.profiler = None, None
        data = json.dumps(body).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": data})


def serve_profiled(port: int, app_name: str, database_url: str | None) -> None:
    """The server of `--profile`: the app `vivix serve --no-worker` (or the baseline)
    serves, behind ProfileProbe, on the same uvicorn settings."""
    import uvicorn

    from bench.common import uvicorn_settings

    if app_name == "baseline":
        from bench.baseline_app import create_baseline_app

        assert database_url is not None
        app: Any = create_baseline_app(database_url)
        spans: tuple[tuple[str, str, str], ...] = COMMON_SPANS
    else:
        from vivix.app import create_app
        from vivix.settings import load_settings

        app = create_app(load_settings(), embedded_worker=False)
        spans = VIVIX_SPANS + COMMON_SPANS
    uvicorn.run(ProfileProbe(app, spans), host="127.0.0.1", port=port, **uvicorn_settings())


async def profile(kind: str, scenario: str, opts: Options, top: int) -> None:
    with tempfile.TemporaryDirectory(prefix=f"vivix-profile-{kind}-") as tmp:
        workdir = Path(tmp)
        async with bench_database(kind, workdir) as urls:
            api_keys = await create_bench_keys(workdir, urls.vivix, opts.accounts)
            baseline, vivix = _servers(workdir, urls, api_keys)
            # Same servers, started through serve_profiled (Vivix reads its settings from
            # the environment as before; --database-url is for the baseline).
            for target, name in ((baseline, "baseline"), (vivix, "vivix")):
                target.server.argv = [
                    sys.executable, "-m", "bench.bench_api",
                    "--serve-profiled", str(target.server.port), "--profiled-app", name,
                    "--database-url", urls.baseline,
                ]  # fmt: skip
                target.server.env["VIVIX_BENCH_PROFILE_OUT"] = str(workdir / f"{name}.prof")
            reports = []
            async with running(baseline, vivix):
                for target in (baseline, vivix):
                    await target.seed_reads(READ_SET_SIZE)
                for target in (baseline, vivix):
                    reports.append(await _profile_one(target, scenario, opts, top))
    print(f"=== profile: {scenario} on {kind} ===\n")
    print("\n\n".join(reports))


async def _profile_one(target: ServerUnderTest, scenario: str, opts: Options, top: int) -> str:
    url = target.server.base_url
    calls = target.next_call(scenario)
    await run_load(url, calls, concurrency=max(opts.concurrencies), seconds=opts.warmup, warmup=0)
    windows: dict[str, tuple[LoadResult, dict[str, Any]]] = {}
    async with httpx.AsyncClient(base_url=url) as control:
        for mode in ("spans", "cprofile"):
            started = await control.post(f"{PROFILE_CONTROL}start", params={"mode": mode})
            started.raise_for_status()
            result = await run_load(
                url, calls, concurrency=max(opts.concurrencies), seconds=opts.seconds, warmup=0,
                client=opts.client,
            )  # fmt: skip
            windows[mode] = (result, (await control.post(f"{PROFILE_CONTROL}stop")).json())
    return render_profile(target.server.name, windows, top)


def _where(filename: str) -> str:
    for marker in ("site-packages/", "/src/", "/lib/python3"):
        if marker in filename:
            tail = filename.split(marker, 1)[1]
            return tail if marker != "/lib/python3" else "stdlib:" + tail.split("/", 1)[-1]
    return filename


def _package(filename: str, func: str) -> str:
    if filename == "~":
        # C functions: name the interesting ones, they are where a thread hop or I/O is.
        if "SimpleQueue" in func:
            return "SimpleQueue.put (aiosqlite thread hand-off)"
        return "other C calls"
    where = _where(filename)
    if where.startswith("stdlib:"):
        return "stdlib:" + where[len("stdlib:") :].split("/", 1)[0].removesuffix(".py")
    return where.split("/", 1)[0].removesuffix(".py")


def render_profile(
    name: str, windows: dict[str, tuple[LoadResult, dict[str, Any]]], top: int
) -> str:
    import pstats
    from collections import defaultdict

    spans_result, spans = windows["spans"]
    profiled_result, profiled = windows["cprofile"]
    requests = max(1, spans["requests"])
    lines = [
        f"--- {name}: {spans_result.rps:.0f} req/s, p50 {spans_result.latency_ms(50):.1f} ms "
        f"with step timing; {profiled_result.rps:.0f} req/s under cProfile",
        "",
        "round trips and transaction events per request:",
    ]
    for event_name, n in sorted(spans["events"].items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"  {n / requests:6.2f}  {event_name}")
    lines += ["", "where a request's wall time goes (ms per request = calls × mean):"]
    order = ["request (whole ASGI app)"] + [label for label, _, _ in VIVIX_SPANS + COMMON_SPANS]
    for label in order:
        if label in spans["spans"]:
            calls, seconds = spans["spans"][label]
            lines.append(
                f"  {seconds / requests * 1000:7.2f} ms  {calls / requests:4.1f} × "
                f"{seconds / max(calls, 1) * 1000:6.2f} ms  {label}"
            )

    stats = pstats.Stats(profiled["stats"])
    entries = stats.stats  # type: ignore[attr-defined]
    cprofile_requests = max(1, profiled["requests"])
    total = sum(tt for (_, _, tt, _, _) in entries.values())
    lines += [
        "",
        f"event-loop thread CPU under cProfile: {total / cprofile_requests * 1e6:.0f} µs/request "
        "(thread CPU time, inflated by the profiler; the aiosqlite thread is not in it). By package:",
    ]
    by_package: dict[str, float] = defaultdict(float)
    for (filename, _, func), (_, _, tt, _, _) in entries.items():
        by_package[_package(filename, func)] += tt
    for package, tt in sorted(by_package.items(), key=lambda kv: -kv[1])[:12]:
        lines.append(f"  {tt / total:6.1%} {tt / cprofile_requests * 1e6:7.0f} µs/rq  {package}")
    lines += ["", f"top {top} functions by self time:"]
    ranked = sorted(entries.items(), key=lambda kv: -kv[1][2])[:top]
    for (filename, line, func), (_, _, tt, _, _) in ranked:
        lines.append(
            f"  {tt / total:6.1%} {tt / cprofile_requests * 1e6:7.0f} µs/rq  {func}"
            f"  ({_where(filename)}:{line})"
        )
    # Coroutines that stay on the stack across greenlet switches (the ASGI middlewares)
    # get impossible cumulative times from cProfile; leave out anything above the total.
    lines += ["", "inclusive CPU of Vivix's own functions (µs/request; middlewares omitted):"]
    own = [
        (ct, func, filename, line)
        for (filename, line, func), (_, _, _, ct, _) in entries.items()
        if "/vivix/" in filename and ct < total
    ]
    for ct, func, filename, line in sorted(own, reverse=True)[:top]:
        lines.append(f"  {ct / cprofile_requests * 1e6:7.0f}  {func}  ({_where(filename)}:{line})")
    return "\n".join(lines)


# --- command line -------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_api", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument(
        "--seconds",
        type=float,
        default=8.0,
        help="measured seconds per server per scenario (default 8)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=[16, 64],
        help="concurrent keep-alive connections, one figure each (default 16 64)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=1.0,
        help="warm-up seconds before each measured window (default 1)",
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="alternating windows per figure (default 2)"
    )
    parser.add_argument(
        "--client",
        choices=("raw", "httpx"),
        default="raw",
        help="load generator: raw keep-alive connections (default) or httpx, whose own CPU "
        "cost per request exceeds a minimal server's",
    )
    parser.add_argument(
        "--accounts",
        type=int,
        default=1,
        help="spread the load over this many accounts (default 1: one hot account, the "
        "worst case for its row lock)",
    )
    parser.add_argument(
        "--scenarios",
        nargs="+",
        choices=SCENARIOS,
        default=list(SCENARIOS),
        help="which figures (default: read submit)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--output", type=Path, help="also write the JSON report to this file")
    parser.add_argument("--check", action="store_true", help="exit 2 if a target is missed")
    parser.add_argument(
        "--profile", choices=SCENARIOS, help="profile Vivix on one scenario instead of benchmarking"
    )
    parser.add_argument("--top", type=int, default=25, help="rows in profile listings")
    parser.add_argument("--serve-profiled", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--profiled-app", default="vivix", help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_profiled:
        serve_profiled(args.serve_profiled, args.profiled_app, args.database_url)
        return 0
    databases = ("sqlite", "postgres") if args.db == "both" else (args.db,)
    opts = Options(
        databases,
        args.seconds,
        tuple(args.concurrency),
        args.warmup,
        max(1, args.rounds),
        args.client,
        max(1, args.accounts),
        tuple(s for s in SCENARIOS if s in args.scenarios),
    )
    try:
        with event_loop_runner() as runner:
            if args.profile:
                for kind in databases:
                    try:
                        runner.run(profile(kind, args.profile, opts, args.top))
                    except PostgresUnavailable as exc:
                        log(f"{kind}: skipped: {exc}")
                return 0
            report = runner.run(bench_all(opts))
    except BenchError as exc:
        log(f"benchmark failed: {exc}")
        return 1
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n", "utf-8")
    print(json.dumps(report, indent=2) if args.json else render_table(report))
    if args.check and not all(r["met"] for r in report["results"]):
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
