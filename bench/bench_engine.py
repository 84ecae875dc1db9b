"""Generation-engine benchmarks (issue "Generation engine", must-show 5): how soon a
submitted generation is picked up by a worker (dispatch latency) and how many generations
per second the engine completes (throughput), with the embedded worker (`vivix serve`) and
with 1 and 4 `vivix worker` processes, on SQLite and on PostgreSQL; then the local
renderer's timings (bench/bench_render.py, run in a process of its own).

    python -m bench.bench_engine [--db sqlite|postgres|both] [--render] [--json]

Generations run on an "instant renderer": the fal provider pointed at the fal fake
(tests/fakes/fal.py) served in a process of its own, which answers COMPLETED on the first
status check with a 64×48 PNG, so what is measured is Vivix's engine (API, queue, worker,
storage, settlement), not a renderer.

Dispatch latency: from the moment the submit's admission transaction committed to the moment
a worker's claim of that generation returned, both recorded by a probe in the processes
(SQLAlchemy's after_commit event in the API, a wrapper of `Worker._claim` in the worker; see
"stamps"), at a paced submit rate well below the engine's throughput so that it measures the
wake-up and the claim, not a queue. Throughput: `queued` drains N generations enqueued
before the workers start; `burst` submits N while they run (first `created_at` → last
`completed_at`). Memory: 1,000 generations queued, then drained by one worker process whose
resident memory is sampled throughout (plus the kernel's peak, VmHWM).

Targets (PostgreSQL): dispatch p50 ≤ 20 ms and p99 ≤ 100 ms; throughput grows with worker
processes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from bench.common import (
    BenchError,
    HttpCall,
    PostgresUnavailable,
    RawHttpClient,
    Send,
    ServerProcess,
    bench_postgres_admin_url,
    clean_environment,
    event_loop_runner,
    free_port,
    fresh_postgres_database,
    machine_description,
    percentile,
    postgres_backend_pids,
    process_cpu_seconds,
    uvicorn_settings,
)
from vivix.kit.bounds import MAX_CALLS_PER_MINUTE, MAX_CONCURRENT_JOBS

P = TypeVar("P", bound=ServerProcess)
FAL_KEY = "vivix-bench-fal-key"
SECRET_KEY = "vivix-bench-secret"
# seedream-4's first route is fal; 1K is its cheapest price row.
MODEL = "seedream-4"
SUBMIT_BODY = json.dumps({"model": MODEL, "prompt": "bench", "resolution": "1K"}).encode()
BENCH_ACCOUNT = "bench"
# Ample, so that neither credits nor limits ever answer for the benchmark.
BENCH_CREDITS = 1_000_000_000
CONCURRENCY = 8  # jobs per worker process (and for the embedded worker)
SUBMIT_CONNECTIONS = 8
# Paced well below the engine's throughput on this 2-core machine, so that dispatch measures
# the wake-up and the claim, not a queue.
DISPATCH_RATE = 5.0  # submits per second
DISPATCH_SECONDS = 20.0
START_TIMEOUT_S = 180.0  # process start-up (imports) on a busy 2-core machine
BURST = {"sqlite": 200, "postgres": 300}
WARMUP_JOBS = 16
DRAIN_TIMEOUT_S = 120.0
TARGET_DISPATCH_MS = {"p50": 20.0, "p99": 100.0}  # on PostgreSQL
GROWTH_THRESHOLD = 1.2  # 4 workers ÷ 1 worker at least this much counts as growing


@dataclass(frozen=True)
class Topology:
    name: str
    worker_processes: int  # 0: the worker embedded in `vivix serve`


EMBEDDED = Topology("embedded", 0)
ONE_WORKER = Topology("1 worker", 1)
FOUR_WORKERS = Topology("4 workers", 4)
TOPOLOGIES = {
    "sqlite": (EMBEDDED, ONE_WORKER, FOUR_WORKERS),
    "postgres": (ONE_WORKER, FOUR_WORKERS),
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- the instant renderer: the fal fake in its own process --------------------------------


def serve_fal_fake(port: int, polls_before_done: int = 0) -> None:
    """The fal fake answering COMPLETED on the first status check (`polls_before_done=0`;
    more makes a slow upstream: the worker polls after 0.5 s, then 0.75 s…), plus /healthz
    for the readiness check, on uvicorn's default (fast) HTTP stack."""
    import uvicorn
    from tests.fakes.fal import FakeFal

    fake = FakeFal(FAL_KEY, polls_before_done=polls_before_done)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/healthz":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        await fake.app(scope, receive, send)

    uvicorn.run(app, host="127.0.0.1", port=port, lifespan="off", **uvicorn_settings())


def fal_fake_process(workdir: Path, polls_before_done: int = 0) -> ServerProcess:
    port = free_port()
    argv = [sys.executable, "-m", "bench.bench_engine", "--serve-fal-fake", str(port)]
    return ServerProcess(
        f"fal-fake-{polls_before_done}",
        [*argv, "--fal-polls", str(polls_before_done)],
        env=clean_environment(),
        port=port,
        log_path=workdir / f"fal-fake-{polls_before_done}.log",
    )


# --- a Vivix deployment: database, account, processes -------------------------------------


def async_driver_url(url: str) -> str:
    """An operator's URL (sqlite:///…, postgresql://…) with the async driver Vivix uses."""
    scheme, rest = url.split("://", 1)
    driver = "sqlite+aiosqlite" if scheme.startswith("sqlite") else "postgresql+asyncpg"
    return f"{driver}://{rest}"


@dataclass
class Deployment:
    """One database with Vivix's schema and the bench account, and the environment every
    Vivix process of the run shares (same data dir, secret and fal settings)."""

    kind: str
    workdir: Path
    database_url: str
    database_name: str | None  # PostgreSQL: the database, to find its server backends
    env: dict[str, str]
    api_key: str = ""

    async def vivix(self, *args: str) -> str:
        """Run one `vivix` operator command and return what it printed. In this process
        (typer's CliRunner, the environment swapped to the deployment's VIVIX_ settings):
        the same code as the command line, without a Python start-up per command."""
        from typer.testing import CliRunner

        from vivix.cli import app

        env: dict[str, str | None] = {k: None for k in os.environ if k.upper().startswith("VIVIX_")}
        env.update({k: v for k, v in self.env.items() if k.startswith("VIVIX_")})
        # asyncio.run() inside the command needs a thread without a running loop.
        result = await asyncio.to_thread(CliRunner().invoke, app, list(args), env=env)
        if result.exit_code != 0:
            raise BenchError(
                f"`vivix {' '.join(args)}` failed:\n{result.output}{result.exception!r}"
            )
        return result.stdout

    async def create_bench_account(self) -> None:
        await self.vivix("migrate")
        await self.vivix(
            "accounts", "create", BENCH_ACCOUNT, "--credits", str(BENCH_CREDITS), "--json"
        )
        await self.vivix(
            "accounts", "update", BENCH_ACCOUNT, "--calls-per-minute", str(MAX_CALLS_PER_MINUTE),
            "--concurrent-jobs", str(MAX_CONCURRENT_JOBS), "--json",
        )  # fmt: skip
        self.api_key = json.loads(await self.vivix("keys", "create", BENCH_ACCOUNT, "--json"))[
            "key"
        ]


@contextlib.asynccontextmanager
async def deployment(kind: str, workdir: Path, fal_url: str) -> AsyncIterator[Deployment]:
    """A fresh database of `kind` (SQLite: a file in `workdir`; PostgreSQL: a new database,
    dropped after), migrated with `vivix migrate`, with the bench account and its key."""

    async def prepared(url: str, name: str | None) -> Deployment:
        env = clean_environment(
            VIVIX_DATA_DIR=str(workdir / "vivix-data"),
            VIVIX_DATABASE_URL=url,
            VIVIX_SECRET_KEY=SECRET_KEY,
            VIVIX_LOG_LEVEL="warning",
            VIVIX_PROVIDERS__FAL__API_KEY=FAL_KEY,
            VIVIX_PROVIDERS__FAL__BASE_URL=fal_url,
            VIVIX_WORKER__CONCURRENCY=str(CONCURRENCY),
        )
        deployed = Deployment(kind, workdir, url, name, env)
        await deployed.create_bench_account()
        return deployed

    if kind == "sqlite":
        yield await prepared(f"sqlite:///{workdir / 'vivix.db'}", None)
        return
    async with fresh_postgres_database(bench_postgres_admin_url(), "vivix_bench_engine") as url:
        from sqlalchemy.engine import make_url

        yield await prepared(url, make_url(url).database)


class WorkerProcess(ServerProcess):
    """A `vivix worker --json` process; ready once it has printed its JSON line."""

    async def wait_ready(self, within_s: float = 60.0) -> None:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise BenchError(
                    f"{self.name} exited with {self.process.returncode} while starting:\n"
                    f"{self.log_tail()}"
                )
            with contextlib.suppress(OSError):
                if '{"worker"' in self.log_path.read_text("utf-8", errors="replace"):
                    return
            await asyncio.sleep(0.05)
        raise BenchError(f"{self.name} did not start in {within_s:.0f}s:\n{self.log_tail()}")


def api_process(dep: Deployment, *, embedded_worker: bool, tag: str = "") -> ServerProcess:
    port = free_port()
    argv = [sys.executable, "-m", "vivix", "serve", "--port", str(port), "--json"]
    if not embedded_worker:
        argv.insert(4, "--no-worker")
    return ServerProcess(
        "vivix serve" + ("" if embedded_worker else " --no-worker"),
        argv,
        env={**dep.env, "VIVIX_PUBLIC_URL": f"http://127.0.0.1:{port}"},
        port=port,
        log_path=dep.workdir / f"api{tag}.log",
    )


def worker_process(dep: Deployment, index: int, concurrency: int = CONCURRENCY) -> WorkerProcess:
    argv = [sys.executable, "-m", "vivix", "worker", "--concurrency", str(concurrency), "--json"]
    return WorkerProcess(
        f"vivix worker #{index}", argv, env=dep.env, port=0,
        log_path=dep.workdir / f"worker-{index}.log",
    )  # fmt: skip


async def start_all(processes: Sequence[ServerProcess]) -> None:
    for process in processes:
        process.start()
    await asyncio.gather(*(process.wait_ready(START_TIMEOUT_S) for process in processes))


def stop_all(processes: Sequence[ServerProcess], timeout_s: float = 15.0) -> None:
    """SIGINT to all at once (they shut down in parallel, gracefully), SIGKILL to laggards."""
    running = [p.process for p in processes if p.process is not None and p.process.poll() is None]
    for process in running:
        process.send_signal(signal.SIGINT)
    deadline = time.monotonic() + timeout_s
    for process in running:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Engine:
    api: ServerProcess
    workers: list[WorkerProcess]

    def check_alive(self) -> None:
        for process in (self.api, *self.workers):
            process.check_alive()


# --- submitting and reading back ----------------------------------------------------------


@dataclass(frozen=True)
class Submitted:
    generation_id: str
    latency_ms: float  # POST → 201, seen by the client


class Submitter:
    """POST /api/v1/generate over a few keep-alive connections (common.RawHttpClient),
    each used by one request at a time."""

    def __init__(self, base_url: str, api_key: str, connections: int = SUBMIT_CONNECTIONS):
        self.client = RawHttpClient(base_url, connections)
        headers = {"authorization": f"Bearer {api_key}", "content-type": "application/json"}
        self.call = HttpCall("POST", "/api/v1/generate", SUBMIT_BODY, headers)
        self.idle: asyncio.Queue[Send] = asyncio.Queue()

    async def __aenter__(self) -> Submitter:
        await self.client.__aenter__()
        for send in self.client.senders():
            self.idle.put_nowait(send)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.client.__aexit__(*exc_info)

    async def submit(self) -> Submitted:
        send = await self.idle.get()
        started = time.perf_counter()
        try:
            status, body = await send(self.call)
        finally:
            self.idle.put_nowait(send)
        latency_ms = (time.perf_counter() - started) * 1000
        if status != 201:
            raise BenchError(f"submit answered {status}: {body[:300].decode('utf-8', 'replace')}")
        return Submitted(json.loads(body)["generation_id"], latency_ms)

    async def paced(self, rate: float, seconds: float) -> list[Submitted]:
        """`rate` submits a second, each at its scheduled time whatever the others do."""
        start = time.perf_counter()

        async def at(index: int) -> Submitted:
            await asyncio.sleep(start + index / rate - time.perf_counter())
            return await self.submit()

        return list(await asyncio.gather(*(at(i) for i in range(round(rate * seconds)))))

    async def burst(self, count: int) -> list[Submitted]:
        """`count` submits as fast as the connections allow."""
        return list(await asyncio.gather(*(self.submit() for _ in range(count))))


@dataclass(frozen=True)
class GenerationTimes:
    generation_id: str
    status: str
    error_code: str | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None


class QueueReader:
    """The benchmark's own read-only view of the generations table."""

    def __init__(self, database_url: str) -> None:
        from sqlalchemy.ext.asyncio import create_async_engine

        self.engine = create_async_engine(async_driver_url(database_url), pool_size=2)

    async def close(self) -> None:
        await self.engine.dispose()

    async def count(self, *statuses: str) -> int:
        from sqlalchemy import func, select

        from vivix.models import Generation

        async with self.engine.connect() as conn:
            query = select(func.count()).select_from(Generation)
            result = await conn.execute(query.where(Generation.status.in_(statuses)))
            return int(result.scalar_one())

    async def unfinished(self) -> int:
        return await self.count("pending", "processing")

    async def wait_drained(
        self, timeout_s: float = DRAIN_TIMEOUT_S, engine: Engine | None = None
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while (left := await self.unfinished()) > 0:
            if engine is not None:
                engine.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"{left} generations still unfinished after {timeout_s:.0f}s")
            await asyncio.sleep(0.1)

    async def times(self, generation_ids: Sequence[str]) -> list[GenerationTimes]:
        from sqlalchemy import select

        from vivix.models import Generation

        columns = (
            Generation.id, Generation.status, Generation.error_code, Generation.created_at,
            Generation.started_at, Generation.completed_at,
        )  # fmt: skip
        rows: list[GenerationTimes] = []
        async with self.engine.connect() as conn:
            for offset in range(0, len(generation_ids), 500):
                chunk = generation_ids[offset : offset + 500]
                result = await conn.execute(select(*columns).where(Generation.id.in_(chunk)))
                rows += [GenerationTimes(*row) for row in result.all()]
        return rows

    async def completed_times(self, generation_ids: Sequence[str]) -> list[GenerationTimes]:
        """Every row of `generation_ids`, all of which must have completed."""
        rows = await self.times(generation_ids)
        bad = [r for r in rows if r.status != "completed" or r.started_at is None]
        if bad or len(rows) != len(generation_ids):
            sample = ", ".join(f"{r.status}/{r.error_code}" for r in bad[:5])
            raise BenchError(
                f"{len(bad)} of {len(generation_ids)} generations did not complete "
                f"({len(rows)} found; e.g. {sample}): a figure with failures is meaningless"
            )
        return rows


# --- CPU accounting -----------------------------------------------------------------------


class CpuMeter:
    """CPU seconds spent by each group of processes over a window. Groups are re-listed
    at the end (PostgreSQL backends come and go); a process that started during the window
    counts in full."""

    def __init__(self, groups: dict[str, Callable[[], list[int]]]) -> None:
        self.groups = groups
        self._before: dict[str, dict[int, float]] = {}
        self._machine_before = 0.0
        self._started = 0.0

    @staticmethod
    def _machine_busy() -> float:
        import psutil

        times = psutil.cpu_times()
        return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))

    def _sample(self) -> dict[str, dict[int, float]]:
        return {
            name: {pid: process_cpu_seconds(pid) or 0.0 for pid in pids()}
            for name, pids in self.groups.items()
        }

    def start(self) -> None:
        self._before = self._sample()
        self._machine_before = self._machine_busy()
        self._started = time.perf_counter()

    def stop(self) -> CpuUse:
        wall = time.perf_counter() - self._started
        after = self._sample()
        by_group = {
            name: sum(cpu - self._before[name].get(pid, 0.0) for pid, cpu in pids.items())
            for name, pids in after.items()
        }
        return CpuUse(wall, by_group, self._machine_busy() - self._machine_before)


@dataclass
class CpuUse:
    wall_s: float
    by_group_s: dict[str, float]
    machine_busy_s: float  # every process on the machine, other users' included

    def per_job_ms(self, jobs: int) -> dict[str, float]:
        return {name: round(s / jobs * 1000, 2) for name, s in self.by_group_s.items()}

    def cores(self) -> dict[str, float]:
        measured = sum(self.by_group_s.values())
        return {
            "measured_processes": round(measured / self.wall_s, 2),
            "whole_machine": round(self.machine_busy_s / self.wall_s, 2),
        }


def cpu_meter(dep: Deployment, engine: Engine, fal: ServerProcess) -> CpuMeter:
    def pids(*processes: ServerProcess) -> Callable[[], list[int]]:
        return lambda: [p.pid for p in processes if p.pid is not None]

    groups = {"api": pids(engine.api)}
    if engine.workers:
        groups["workers"] = pids(*engine.workers)
    groups["fal_fake"] = pids(fal)
    if dep.database_name is not None:
        name = dep.database_name
        groups["postgres"] = lambda: postgres_backend_pids(name)
    groups["bench_client"] = lambda: [os.getpid()]
    return CpuMeter(groups)


# --- measurements -------------------------------------------------------------------------


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


@dataclass
class DispatchResult:
    database: str
    topology: str
    submits: int
    rate_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    submit_p50_ms: float  # client-observed POST latency (admission transaction and all)
    admission_p50_ms: float  # created_at (the submit starts) → its transaction committed
    target: dict[str, float] | None = None
    met: bool | None = None


@dataclass
class ThroughputResult:
    """`queued`: N generations enqueued with no worker running, then the workers start;
    first `started_at` → last `completed_at` (the engine alone). `burst`: N submitted as
    fast as 8 connections allow while the workers run; first `created_at` → last
    `completed_at` (API and engine together, on the same 2 cores)."""

    database: str
    topology: str
    mode: str
    worker_processes: int
    concurrency_per_process: int
    jobs: int
    enqueue_s: float  # first → last created_at
    seconds: float
    completed_per_s: float
    cpu_ms_per_job: dict[str, float] = field(default_factory=dict)
    cores_busy: dict[str, float] = field(default_factory=dict)


def load_stamps(paths: Sequence[Path]) -> dict[str, dict[str, float]]:
    """Merged "stamps" probe output of the run's processes: committed / claimed times."""
    merged: dict[str, dict[str, float]] = {"committed": {}, "claimed": {}}
    for path in paths:
        if not path.exists():
            raise BenchError(f"{path.name} missing: a process did not stop cleanly")
        data = json.loads(path.read_text("utf-8"))
        for kind in merged:
            merged[kind].update(data[kind])
    return merged


def dispatch_result(
    dep: Deployment, topology: Topology, submitted: list[Submitted], rows: list[GenerationTimes],
    stamps: dict[str, dict[str, float]],
) -> DispatchResult:  # fmt: skip
    committed, claimed = stamps["committed"], stamps["claimed"]
    missing = [r.generation_id for r in rows if r.generation_id not in committed or r.generation_id not in claimed]  # fmt: skip
    if missing:
        raise BenchError(f"{len(missing)} generations without commit/claim stamps")
    waits = sorted(claimed[r.generation_id] - committed[r.generation_id] for r in rows)
    admission = sorted(committed[r.generation_id] - r.created_at.timestamp() for r in rows)
    result = DispatchResult(
        database=dep.kind,
        topology=topology.name,
        submits=len(rows),
        rate_per_s=DISPATCH_RATE,
        p50_ms=ms(percentile(waits, 50)),
        p90_ms=ms(percentile(waits, 90)),
        p99_ms=ms(percentile(waits, 99)),
        max_ms=ms(waits[-1]),
        submit_p50_ms=round(percentile(sorted(s.latency_ms for s in submitted), 50), 2),
        admission_p50_ms=ms(percentile(admission, 50)),
    )
    if dep.kind == "postgres" and topology.worker_processes:
        result.target = TARGET_DISPATCH_MS
        result.met = (
            result.p50_ms <= TARGET_DISPATCH_MS["p50"]
            and result.p99_ms <= TARGET_DISPATCH_MS["p99"]
        )
    log(
        f"  {topology.name:<10} dispatch    p50 {result.p50_ms:7.1f} ms  p99 {result.p99_ms:7.1f}"
        f" ms  (submit p50 {result.submit_p50_ms:.1f} ms)"
    )
    return result


def throughput_result(
    dep: Deployment, topology: Topology, mode: str, rows: list[GenerationTimes], cpu: CpuUse,
    jobs_in_cpu_window: int,
) -> ThroughputResult:  # fmt: skip
    first_created = min(r.created_at for r in rows)
    last_created = max(r.created_at for r in rows)
    last_done = max(r.completed_at for r in rows if r.completed_at is not None)
    if mode == "queued":
        start = min(r.started_at for r in rows if r.started_at is not None)
    else:
        start = first_created
    seconds = (last_done - start).total_seconds()
    result = ThroughputResult(
        database=dep.kind,
        topology=topology.name,
        mode=mode,
        worker_processes=topology.worker_processes,
        concurrency_per_process=CONCURRENCY,
        jobs=len(rows),
        enqueue_s=round((last_created - first_created).total_seconds(), 3),
        seconds=round(seconds, 3),
        completed_per_s=round(len(rows) / seconds, 1),
        cpu_ms_per_job=cpu.per_job_ms(max(1, jobs_in_cpu_window)),
        cores_busy=cpu.cores(),
    )
    log(
        f"  {topology.name:<10} {mode:<6} {result.completed_per_s:7.1f}/s  ({result.jobs} in "
        f"{result.seconds:.2f} s; enqueued in {result.enqueue_s:.2f} s; cores busy: ours "
        f"{result.cores_busy['measured_processes']:.2f}, machine "
        f"{result.cores_busy['whole_machine']:.2f})"
    )
    return result


async def bench_topology(
    dep: Deployment, topology: Topology, fal: ServerProcess, reader: QueueReader
) -> tuple[ThroughputResult, DispatchResult, ThroughputResult]:
    """Queued drain, then paced dispatch, then a burst, on one set of processes. Every
    Vivix process runs under the "stamps" probe, which records when each generation's
    admission transaction committed and when a worker's claim of it returned."""
    jobs = BURST[dep.kind]
    tag = topology.name.replace(" ", "-")
    stamp_files: list[Path] = []

    def stamped(process: P) -> P:
        out = dep.workdir / f"stamps-{tag}-{len(stamp_files)}.json"
        stamp_files.append(out)
        return profiled(process, out, "stamps")

    enqueuer = stamped(api_process(dep, embedded_worker=False, tag=f"-enqueue-{tag}"))
    processes: list[ServerProcess] = [enqueuer]
    try:
        await start_all([enqueuer])
        async with Submitter(enqueuer.base_url, dep.api_key) as submitter:
            queued = await submitter.burst(jobs)
        if topology.worker_processes:
            workers = [
                stamped(worker_process(dep, i + 1)) for i in range(topology.worker_processes)
            ]
            engine = Engine(enqueuer, workers)
            starting: list[ServerProcess] = list(engine.workers)
        else:
            stop_all([enqueuer])
            engine = Engine(stamped(api_process(dep, embedded_worker=True, tag=f"-{tag}")), [])
            starting = [engine.api]
        processes = [engine.api, *engine.workers]
        # They claim as soon as they run; CPU is counted from ready on (start-up imports
        # would swamp it), per generation completed in that window.
        await start_all(starting)
        meter = cpu_meter(dep, engine, fal)
        meter.start()
        done_before = await reader.count("completed")
        await reader.wait_drained(engine=engine)
        cpu = meter.stop()
        done_in_window = await reader.count("completed") - done_before
        rows = await reader.completed_times([s.generation_id for s in queued])
        drain = throughput_result(dep, topology, "queued", rows, cpu, done_in_window)
        await asyncio.sleep(0.5)

        async with Submitter(engine.api.base_url, dep.api_key) as submitter:
            paced = await submitter.paced(DISPATCH_RATE, DISPATCH_SECONDS)
            await reader.wait_drained(engine=engine)
            paced_rows = await reader.completed_times([s.generation_id for s in paced])

            meter.start()
            submitted = await submitter.burst(jobs)
            await reader.wait_drained(engine=engine)
            cpu = meter.stop()
        rows = await reader.completed_times([s.generation_id for s in submitted])
        burst = throughput_result(dep, topology, "burst", rows, cpu, jobs)
    finally:
        stop_all(processes)
    dispatch = dispatch_result(dep, topology, paced, paced_rows, load_stamps(stamp_files))
    return drain, dispatch, burst


MEMORY_JOBS = 1000
SCENARIOS = ("engine", "slow", "memory")


def vm_hwm_bytes(pid: int) -> int | None:
    """The kernel's peak resident set size of a process (Linux /proc; None elsewhere)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


async def bench_memory(dep: Deployment, reader: QueueReader) -> dict[str, Any]:
    """MEMORY_JOBS generations queued with no worker running, then drained by one worker
    process; its RSS is sampled every 0.1 s and read at each quarter of the drain."""
    import psutil

    from bench.common import process_tree_rss

    mb = 1024 * 1024
    enqueuer = api_process(dep, embedded_worker=False, tag="-memory")
    worker = worker_process(dep, 1)
    try:
        await start_all([enqueuer])
        async with Submitter(enqueuer.base_url, dep.api_key) as submitter:
            queued = await submitter.burst(MEMORY_JOBS)
        stop_all([enqueuer])
        done_before = await reader.count("completed")
        await start_all([worker])
        assert worker.pid is not None
        main = psutil.Process(worker.pid)
        ready = main.memory_info().rss
        peak = tree_peak = ready
        marks: dict[int, float] = {}
        quarter = MEMORY_JOBS // 4
        started = time.monotonic()
        while True:
            with contextlib.suppress(psutil.Error):
                peak = max(peak, main.memory_info().rss)
            tree_peak = max(tree_peak, process_tree_rss(worker.pid) or 0)
            done = await reader.count("completed") - done_before
            for mark in range(quarter, done + 1, quarter):
                marks.setdefault(mark, main.memory_info().rss / mb)
            if await reader.unfinished() == 0:
                break
            worker.check_alive()
            if time.monotonic() - started > DRAIN_TIMEOUT_S * 5:
                raise BenchError(f"memory drain: {MEMORY_JOBS - done} left after the timeout")
            await asyncio.sleep(0.1)
        seconds = time.monotonic() - started
        hwm = vm_hwm_bytes(worker.pid) or 0
    finally:
        stop_all([enqueuer, worker])
    await reader.completed_times([s.generation_id for s in queued])
    result = {
        "database": dep.kind,
        "jobs": MEMORY_JOBS,
        "concurrency": CONCURRENCY,
        "seconds": round(seconds, 1),
        "rss_ready_mb": round(ready / mb, 1),
        "rss_peak_mb": round(peak / mb, 1),
        "tree_rss_peak_mb": round(tree_peak / mb, 1),
        "vmhwm_mb": round(hwm / mb, 1),
        "rss_mb_when_done": {str(k): round(v, 1) for k, v in sorted(marks.items())},
    }
    log(
        f"  memory     {MEMORY_JOBS} drained in {seconds:.1f} s; worker RSS ready"
        f" {result['rss_ready_mb']} MiB, peak {result['rss_peak_mb']} MiB, VmHWM"
        f" {result['vmhwm_mb']} MiB, by jobs done {result['rss_mb_when_done']}"
    )
    return result


SLOW_POLLS = 2  # the slow fal fake: done on the third status check, ~1.3 s after submit
SLOW_JOBS = 160


async def bench_slow_scaling(
    dep: Deployment, reader: QueueReader, slow_fal_url: str
) -> list[dict[str, Any]]:
    """Throughput when the upstream takes ~1.3 s per job (as real ones take seconds): a
    worker process is then bound by its concurrency slots, not by CPU, so more processes
    should complete more. SLOW_JOBS queued, drained by 1, then by 4 worker processes."""
    results = []
    for count in (1, 4):
        enqueuer = api_process(dep, embedded_worker=False, tag=f"-slow-{count}")
        workers = [worker_process(dep, i + 1) for i in range(count)]
        for worker in workers:
            worker.env["VIVIX_PROVIDERS__FAL__BASE_URL"] = slow_fal_url
        try:
            await start_all([enqueuer])
            async with Submitter(enqueuer.base_url, dep.api_key) as submitter:
                queued = await submitter.burst(SLOW_JOBS)
            await start_all(workers)
            await reader.wait_drained(engine=Engine(enqueuer, workers))
        finally:
            stop_all([enqueuer, *workers])
        rows = await reader.completed_times([s.generation_id for s in queued])
        first = min(r.started_at for r in rows if r.started_at is not None)
        seconds = (max(r.completed_at for r in rows if r.completed_at) - first).total_seconds()
        results.append(
            {
                "database": dep.kind,
                "worker_processes": count,
                "concurrency_per_process": CONCURRENCY,
                "jobs": len(rows),
                "seconds": round(seconds, 2),
                "completed_per_s": round(len(rows) / seconds, 1),
            }
        )
        log(f"  slow upstream, {count} worker(s): {results[-1]['completed_per_s']}/s")
    return results


async def bench_database(
    kind: str, fal: ServerProcess, report: dict[str, Any], topologies: Sequence[Topology],
    only: set[str], slow_fal: ServerProcess,
) -> None:  # fmt: skip
    with tempfile.TemporaryDirectory(prefix=f"vivix-bench-engine-{kind}-") as tmp:
        async with deployment(kind, Path(tmp), fal.base_url) as dep:
            reader = QueueReader(dep.database_url)
            try:
                for topology in topologies if "engine" in only else ():
                    drain, dispatch, burst = await bench_topology(dep, topology, fal, reader)
                    report["throughput"] += [asdict(drain), asdict(burst)]
                    report["dispatch"].append(asdict(dispatch))
                if "slow" in only:
                    report["slow_scaling"] += await bench_slow_scaling(
                        dep, reader, slow_fal.base_url
                    )
                if "memory" in only:
                    report["memory"].append(await bench_memory(dep, reader))
            finally:
                await reader.close()


def scaling(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Throughput with 4 worker processes ÷ with 1, per database and mode."""
    rows = []
    slow = [{**r, "mode": "slow upstream"} for r in report.get("slow_scaling", [])]
    for kind in ("sqlite", "postgres"):
        for mode in ("queued", "burst", "slow upstream"):
            rates = {
                r["worker_processes"]: r["completed_per_s"]
                for r in [*report["throughput"], *slow]
                if r["database"] == kind and r["mode"] == mode
            }
            if 1 in rates and 4 in rates:
                ratio = rates[4] / rates[1]
                rows.append(
                    {
                        "database": kind,
                        "mode": mode,
                        "one_worker_per_s": rates[1],
                        "four_workers_per_s": rates[4],
                        "ratio": round(ratio, 2),
                        "grows": ratio >= GROWTH_THRESHOLD,
                    }
                )
    return rows


def run_render_benchmark() -> dict[str, Any] | None:
    """bench/bench_render.py in its own process (its last line is its JSON report)."""
    import importlib.util

    if importlib.util.find_spec("bench.bench_render") is None:
        return None
    done = subprocess.run(
        [sys.executable, "-m", "bench.bench_render"],
        cwd=Path(__file__).resolve().parents[1],
        env=clean_environment(),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0 or not done.stdout.strip():
        raise BenchError(f"bench_render failed:\n{done.stdout}{done.stderr}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


async def bench_all(databases: Sequence[str], only: set[str]) -> dict[str, Any]:
    report: dict[str, Any] = {
        "benchmark": "engine",
        "machine": machine_description(),
        "settings": {
            "model": MODEL,
            "renderer": "fal fake, polls_before_done=0, 64x48 PNG, own process",
            "concurrency_per_process": CONCURRENCY,
            "dispatch_rate_per_s": DISPATCH_RATE,
            "dispatch_seconds": DISPATCH_SECONDS,
            "burst": BURST,
            "submit_connections": SUBMIT_CONNECTIONS,
        },
        "dispatch": [],
        "throughput": [],
        "memory": [],
        "slow_scaling": [],
        "skipped": [],
    }
    with tempfile.TemporaryDirectory(prefix="vivix-bench-fal-") as tmp:
        fal = fal_fake_process(Path(tmp))
        slow_fal = fal_fake_process(Path(tmp), SLOW_POLLS)
        try:
            await start_all([fal, slow_fal])
            for kind in databases:
                log(f"{kind}:")
                try:
                    await bench_database(kind, fal, report, TOPOLOGIES[kind], only, slow_fal)
                except PostgresUnavailable as exc:
                    log(f"  skipped: {exc}")
                    report["skipped"].append({"database": kind, "reason": str(exc)})
        finally:
            stop_all([fal, slow_fal])
    report["scaling"] = scaling(report)
    report["machine"]["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    return report


# --- profiling (`--profile`) --------------------------------------------------------------
#
# Runs `vivix worker` processes through `--profiled-worker OUT MODE -- <vivix args>`: the
# same CLI in a process that first installs probes and writes what they saw to OUT when the
# worker stops. Mode "spans": wall time of the job's steps, SQL statements per generation,
# event-loop lag, and the time of every wake-up signal and claim (joined afterwards with the
# rows' created_at/started_at to split the dispatch latency). Mode "cprofile": the event-loop
# thread's CPU under cProfile (thread CPU time; aiosqlite's thread is not in it).

# (label, module, attribute) of async callables timed in "spans" mode.
WORKER_SPANS = (
    ("claim transaction (Worker._claim)", "vivix.worker.runner", "Worker._claim"),
    ("job (JobExecutor.run)", "vivix.worker.service", "JobExecutor.run"),
    ("  submit + persist handle", "vivix.worker.service", "JobExecutor._submit"),
    ("    FalAdapter.submit", "vivix.providers.fal.adapter", "FalAdapter.submit"),
    ("  poll until result", "vivix.worker.service", "JobExecutor._poll"),
    ("    download outputs", "vivix.providers.fal.adapter", "FalAdapter._download_outputs"),
    ("  complete (store + settle)", "vivix.worker.service", "JobExecutor.complete"),
    ("    OutputStore.put", "vivix.storage.service", "OutputStore.put"),
    ("  circuits.open_routes", "vivix.providers.circuits", "CircuitBreakers.open_routes"),
    ("  circuits.record_success", "vivix.providers.circuits", "CircuitBreakers.record_success"),
    ("HTTP to the provider (ProviderHttp.request)", "vivix.providers.http", "ProviderHttp.request"),
)


class WorkerProbe:
    """Installed in a profiled worker process before the worker is built (see above)."""

    def __init__(self, mode: str) -> None:
        from collections import defaultdict

        self.mode = mode
        self.spans: defaultdict[str, list[float]] = defaultdict(lambda: [0, 0.0])
        self.sql: defaultdict[str, list[float]] = defaultdict(lambda: [0, 0.0])
        self.wakes: list[tuple[float, str, int]] = []  # (time, source, jobs running)
        self.claims: list[tuple[float, float, str | None, int]] = []  # (+ jobs running)
        self.concurrency = 0
        self.loop_lag_ms: list[float] = []
        self.profiler: Any = None
        # "stamps": when each generation's row was committed (API) and claimed (worker).
        self.committed: dict[str, float] = {}
        self.claimed: dict[str, float] = {}

    def _timed(self, label: str, module_name: str, attribute: str) -> None:
        import functools
        import importlib

        owner: Any = importlib.import_module(module_name)
        *path, name = attribute.split(".")
        for part in path:
            owner = getattr(owner, part, None)
        original = getattr(owner, name, None)
        if original is None:  # renamed in src since this was written: time the rest
            log(f"profile: {module_name}.{attribute} not found, not timed")
            return

        @functools.wraps(original)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                span = self.spans[label]
                span[0] += 1
                span[1] += time.perf_counter() - started

        setattr(owner, name, timed)

    def install(self) -> None:
        from vivix.worker import runner

        probe = self
        claim, wake, wake_async, start, stop = (
            runner.Worker._claim, runner.Worker.wake, runner.Worker.wake_async,
            runner.Worker.start, runner.Worker.stop,
        )  # fmt: skip

        if self.mode == "stamps":
            self._stamp_commits()

            async def stamped_claim(worker: Any) -> Any:
                generation = await claim(worker)
                if generation is not None:
                    probe.claimed[generation.id] = time.time()
                return generation

            runner.Worker._claim = stamped_claim  # type: ignore[method-assign]
            return

        if self.mode == "cprofile":
            import cProfile

            # From the worker's start to its stop: imports and start-up are not the engine.
            async def profiled_start(worker: Any) -> None:
                probe.profiler = cProfile.Profile(time.thread_time)
                probe.profiler.enable()
                await start(worker)

            async def profiled_stop(worker: Any, grace_s: float | None = None) -> None:
                probe.profiler.disable()
                await stop(worker, grace_s)

            runner.Worker.start = profiled_start  # type: ignore[method-assign]
            runner.Worker.stop = profiled_stop  # type: ignore[method-assign]
            return

        for label, module, attribute in WORKER_SPANS:
            self._timed(label, module, attribute)

        def busy(worker: Any) -> int:
            return len(getattr(worker, "_running", ()))

        async def probed_claim(worker: Any) -> Any:
            started, running = time.time(), busy(worker)
            generation = await claim(worker)
            probe.claims.append((started, time.time(), generation and generation.id, running))
            return generation

        def probed_wake(worker: Any) -> None:  # the PostgreSQL LISTEN connection's callback
            probe.wakes.append((time.time(), "notify", busy(worker)))
            wake(worker)

        async def probed_wake_async(worker: Any) -> None:  # in-process, after the commit
            probe.wakes.append((time.time(), "in-process", busy(worker)))
            await wake_async(worker)

        async def probed_start(worker: Any) -> None:
            await start(worker)
            probe.concurrency = worker.concurrency
            worker._probe_lag = asyncio.create_task(probe._measure_loop_lag())

        runner.Worker._claim = probed_claim  # type: ignore[method-assign]
        runner.Worker.wake = probed_wake  # type: ignore[method-assign]
        runner.Worker.wake_async = probed_wake_async  # type: ignore[method-assign]
        runner.Worker.start = probed_start  # type: ignore[method-assign]
        self._count_sql()

    async def _measure_loop_lag(self, every_s: float = 0.01) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(every_s)
            self.loop_lag_ms.append((time.perf_counter() - started - every_s) * 1000)

    def _count_sql(self) -> None:
        """Statements per generation, with their wall time (a statement waiting for a lock,
        e.g. SQLite's BEGIN IMMEDIATE in its busy handler or PostgreSQL's FOR UPDATE,
        shows here), and the wait for the in-process SQLite write lock."""
        from sqlalchemy import event
        from sqlalchemy.engine import Engine as SqlEngine

        from vivix.kit import db

        def before(conn: Any, cursor: Any, text: str, *args: Any) -> None:
            conn.info["probe_started"] = time.perf_counter()

        def after(conn: Any, cursor: Any, text: str, *args: Any) -> None:
            span = self.sql[" ".join(text.split())[:70]]
            span[0] += 1
            span[1] += time.perf_counter() - conn.info.pop("probe_started", time.perf_counter())

        event.listen(SqlEngine, "before_cursor_execute", before)
        event.listen(SqlEngine, "after_cursor_execute", after)
        event.listen(SqlEngine, "commit", self._count_commit)

        probe = self
        init = db.Database.__init__

        class TimedLock(asyncio.Lock):
            async def acquire(self) -> bool:
                started = time.perf_counter()
                try:
                    return await super().acquire()
                finally:
                    span = probe.spans["(in-process SQLite write lock wait)"]
                    span[0] += 1
                    span[1] += time.perf_counter() - started

        def probed_init(database: Any, *args: Any, **kwargs: Any) -> None:
            init(database, *args, **kwargs)
            if getattr(database, "_sqlite_write_lock", None) is not None:
                database._sqlite_write_lock = TimedLock()

        db.Database.__init__ = probed_init  # type: ignore[method-assign]

    def _stamp_commits(self) -> None:
        """The moment each new generation's admission committed: when the ledger's `hold`
        (its own transaction) returns a balance, its commit is done."""
        from vivix.billing import ledger

        def stamped(hold: Any) -> Any:
            async def run(self_: Any, admission: Any) -> Any:
                balance = await hold(self_, admission)
                if balance is not None:
                    self.committed[admission.generation.id] = time.time()
                return balance

            return run

        for cls in (ledger.SqliteLedger, ledger.PostgresLedger):
            cls.hold = stamped(cls.hold)  # type: ignore[method-assign]

    def _count_commit(self, conn: Any) -> None:
        self.sql["(commit; count only)"][0] += 1

    def dump(self, out: Path) -> None:
        if self.profiler is not None:
            self.profiler.disable()
            self.profiler.dump_stats(str(out))
            return
        if self.mode == "stamps":
            stamps = {"committed": self.committed, "claimed": self.claimed}
            out.write_text(json.dumps(stamps), "utf-8")
            return
        data = {
            "spans": dict(self.spans),
            "sql": dict(self.sql),
            "concurrency": self.concurrency,
            "wakes": self.wakes,
            "claims": self.claims,
            "loop_lag_ms": self.loop_lag_ms,
        }
        out.write_text(json.dumps(data), "utf-8")


def run_profiled_worker(out: Path, mode: str, vivix_args: list[str]) -> int:
    probe = WorkerProbe(mode)
    probe.install()
    from vivix.cli import app

    try:
        app(vivix_args, standalone_mode=False)
    finally:
        probe.dump(out)
    return 0


def profiled(process: ServerProcess, out: Path, mode: str) -> ServerProcess:
    """The same `vivix` command line run through `--profiled-worker` (see above)."""
    vivix_args = process.argv[process.argv.index("vivix") + 1 :]
    process.argv = [
        sys.executable, "-m", "bench.bench_engine", "--profiled-worker", str(out), mode, "--",
        *vivix_args,
    ]  # fmt: skip
    process.name = f"profiled {process.name}"
    return process


def _distribution(values_s: Sequence[float]) -> str:
    ordered = sorted(values_s)
    if not ordered:
        return "(none)"
    return (
        f"p50 {percentile(ordered, 50) * 1000:7.1f}  p90 {percentile(ordered, 90) * 1000:7.1f}"
        f"  p99 {percentile(ordered, 99) * 1000:7.1f} ms  (n={len(ordered)})"
    )


def split_dispatch(
    rows: list[GenerationTimes], probes: list[dict[str, Any]]
) -> list[str]:  # fmt: skip
    """created_at → the first wake-up signal a worker got after it → started_at (claim)."""
    wakes = sorted(
        (t, running >= probe["concurrency"]) for probe in probes for t, _, running in probe["wakes"]
    )
    to_wake, wake_to_claim, unsignalled, full = [], [], 0, 0
    for row in rows:
        assert row.started_at is not None
        created, started = row.created_at.timestamp(), row.started_at.timestamp()
        signal_at = next(((t, f) for t, f in wakes if created <= t <= started), None)
        if signal_at is None:
            unsignalled += 1
            continue
        to_wake.append(signal_at[0] - created)
        wake_to_claim.append(started - signal_at[0])
        full += signal_at[1]
    dispatch = [(r.started_at - r.created_at).total_seconds() for r in rows if r.started_at]
    return [
        f"  created_at → started_at (dispatch)     {_distribution(dispatch)}",
        f"  created_at → wake-up signal received   {_distribution(to_wake)}",
        f"  wake-up signal → claim (started_at)    {_distribution(wake_to_claim)}",
        f"  signal came while every slot was busy: {full}; claimed with no signal in between"
        f" (poll or a freed slot): {unsignalled} of {len(rows)}",
    ]


def summarize_spans(probes: list[dict[str, Any]], jobs: int) -> list[str]:
    spans: dict[str, list[float]] = {}
    sql: dict[str, list[float]] = {}
    claims = [c for probe in probes for c in probe["claims"]]
    lag = sorted(v for probe in probes for v in probe["loop_lag_ms"])
    for probe in probes:
        for into, source in ((spans, probe["spans"]), (sql, probe["sql"])):
            for label, (count, seconds) in source.items():
                total = into.setdefault(label, [0, 0.0])
                total[0] += count
                total[1] += seconds
    empty = sum(1 for c in claims if c[2] is None)
    claim_wall = sorted(c[1] - c[0] for c in claims)
    lines = [
        f"  claim transactions: {len(claims)} for {jobs} generations ({empty} found nothing);"
        f" event-loop lag p50 {percentile(lag, 50):.1f} ms, p99 {percentile(lag, 99):.1f} ms,"
        f" max {lag[-1] if lag else float('nan'):.1f} ms",
        f"  claim transaction wall time: {_distribution(claim_wall)}",
        "  wall time per generation (ms = calls per generation × mean):",
    ]
    labels = [label for label, _, _ in WORKER_SPANS] + ["(in-process SQLite write lock wait)"]
    for label in labels:
        if label in spans:
            count, seconds = spans[label]
            lines.append(
                f"    {seconds / jobs * 1000:7.2f} ms  {count / jobs:5.2f} × "
                f"{seconds / max(count, 1) * 1000:6.2f} ms  {label}"
            )
    lines.append("  SQL statements per generation (ms = calls × mean wall time, driver included):")
    ranked = sorted(sql.items(), key=lambda kv: -kv[1][1])[:14]
    for statement, (count, seconds) in ranked:
        lines.append(
            f"    {seconds / jobs * 1000:7.2f} ms  {count / jobs:5.2f} × "
            f"{seconds / max(count, 1) * 1000:6.2f} ms  {statement}"
        )
    return lines


def summarize_cprofile(paths: list[Path], jobs: int, top: int = 22) -> list[str]:
    import pstats

    stats = pstats.Stats(*(str(p) for p in paths))
    entries = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for (_, _, tt, _, _) in entries.values())
    lines = [
        f"  event-loop thread CPU: {total / jobs * 1000:.1f} ms per generation (under cProfile,"
        " inflated by it; shares are what to read). Top functions by own time:"
    ]
    ranked = sorted(entries.items(), key=lambda kv: -kv[1][2])[:top]
    for (filename, line, func), (_, _, tt, _, _) in ranked:
        where = filename.split("site-packages/")[-1].split("/src/")[-1]
        lines.append(f"    {tt / total:6.1%}  {func}  ({where}:{line})")
    lines.append("  inclusive CPU of Vivix's worker steps (ms per generation):")
    own = [
        (ct, func, filename.split("/src/")[-1], line)
        for (filename, line, func), (_, _, _, ct, _) in entries.items()
        if "/vivix/" in filename and ct < total
    ]
    for ct, func, where, line in sorted(own, reverse=True)[:top]:
        lines.append(f"    {ct / jobs * 1000:7.2f}  {func}  ({where}:{line})")
    # Where the CPU goes by package: self time grouped by the file's top-level package.
    by_package: dict[str, float] = {}
    for (filename, _, _), (_, _, tt, _, _) in entries.items():
        if "site-packages/" in filename or "/src/vivix/" in filename:
            tail = filename.split("site-packages/")[-1].split("/src/")[-1]
            package = tail.split("/", 1)[0].removesuffix(".py")
        elif filename == "~":
            package = "C builtins (socket send, select, …)"
        else:
            package = "python stdlib"
        by_package[package] = by_package.get(package, 0.0) + tt
    lines.append("  own CPU by package:")
    for package, tt in sorted(by_package.items(), key=lambda kv: -kv[1])[:10]:
        lines.append(f"    {tt / total:6.1%}  {tt / jobs * 1000:6.2f} ms/gen  {package}")
    return lines


async def profile_topology(
    dep: Deployment, reader: QueueReader, workers: int, mode: str, keep: Path | None
) -> list[str]:
    """Queue N, drain them with `workers` profiled worker processes (0: the embedded worker
    of a profiled `vivix serve`), then (spans) paced dispatch; returns the report's lines."""
    jobs = BURST[dep.kind]
    tag = f"{mode}-{workers}"
    outs = [dep.workdir / f"probe-{tag}-{i}.out" for i in range(max(1, workers))]
    enqueuer = api_process(dep, embedded_worker=False, tag=f"-profile-{tag}")
    if workers:
        api = enqueuer
        starting = [profiled(worker_process(dep, i + 1), outs[i], mode) for i in range(workers)]
    else:
        api = profiled(api_process(dep, embedded_worker=True, tag=f"-profile-{tag}"), outs[0], mode)
        starting = [api]
    topology = f"{workers} worker process(es)" if workers else "embedded worker"
    lines = [f"--- {dep.kind}, {topology}, {mode} ---"]
    try:
        await start_all([enqueuer])
        async with Submitter(enqueuer.base_url, dep.api_key) as submitter:
            queued = await submitter.burst(jobs)
        if not workers:
            stop_all([enqueuer])
        done_before = await reader.count("completed")
        await start_all(starting)
        await reader.wait_drained()
        rows = await reader.completed_times([s.generation_id for s in queued])
        first = min(r.started_at for r in rows if r.started_at is not None)
        last = max(r.completed_at for r in rows if r.completed_at is not None)
        rate = len(rows) / (last - first).total_seconds()
        lines.append(f"  queued drain: {rate:.1f}/s under the probes")
        paced: list[GenerationTimes] = []
        if mode == "spans":
            async with Submitter(api.base_url, dep.api_key) as submitter:
                submitted = await submitter.paced(DISPATCH_RATE, DISPATCH_SECONDS)
            await reader.wait_drained()
            paced = await reader.completed_times([s.generation_id for s in submitted])
        total_jobs = await reader.count("completed") - done_before
    finally:
        stop_all([*starting, api, enqueuer])
    return lines + probe_report(dep.kind, mode, outs, keep, paced, total_jobs)


def probe_report(
    kind: str, mode: str, outs: list[Path], keep: Path | None,
    paced: list[GenerationTimes], jobs: int,
) -> list[str]:  # fmt: skip
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        for out in outs:
            shutil.copy(out, keep / f"{kind}-{out.name}")
    if mode == "cprofile":
        return summarize_cprofile(outs, jobs)
    probes = [json.loads(out.read_text("utf-8")) for out in outs]
    lines = [f"  dispatch at {DISPATCH_RATE:g}/s, split by the workers' wake-up signals:"]
    lines += split_dispatch(paced, probes)
    return lines + summarize_spans(probes, jobs)


async def profile_all(databases: Sequence[str], workers: Sequence[int], keep: Path | None) -> str:
    sections = []
    with tempfile.TemporaryDirectory(prefix="vivix-bench-fal-") as tmp:
        fal = fal_fake_process(Path(tmp))
        fal.start()
        try:
            await fal.wait_ready()
            for kind in databases:
                with tempfile.TemporaryDirectory(prefix=f"vivix-profile-engine-{kind}-") as work:
                    async with deployment(kind, Path(work), fal.base_url) as dep:
                        reader = QueueReader(dep.database_url)
                        try:
                            for count in workers:
                                for mode in ("spans", "cprofile"):
                                    lines = await profile_topology(dep, reader, count, mode, keep)
                                    log("\n".join(lines))
                                    sections.append("\n".join(lines))
                        finally:
                            await reader.close()
        finally:
            fal.stop()
    return "\n\n".join(sections)


# --- output -------------------------------------------------------------------------------


def render_tables(report: dict[str, Any]) -> str:
    settings = report["settings"]
    lines = [
        f"dispatch latency (ms): submit committed → claim returned, {settings['dispatch_rate_per_s']:g}"
        f" submits/s for {settings['dispatch_seconds']:g} s",
        f"{'db':<9} {'workers':<10} {'n':>4} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7}"
        f" {'submit p50':>11} {'admission p50':>13} {'target p50/p99':>15} {'met':>4}",
    ]
    for d in report["dispatch"]:
        target = "-" if d["target"] is None else f"≤{d['target']['p50']:g}/≤{d['target']['p99']:g}"
        met = {None: "-", True: "yes", False: "NO"}[d["met"]]
        lines.append(
            f"{d['database']:<9} {d['topology']:<10} {d['submits']:>4} {d['p50_ms']:>7.1f}"
            f" {d['p90_ms']:>7.1f} {d['p99_ms']:>7.1f} {d['max_ms']:>7.1f}"
            f" {d['submit_p50_ms']:>11.1f} {d['admission_p50_ms']:>13.1f} {target:>15} {met:>4}"
        )
    lines += [
        "",
        f"throughput: queued = N enqueued first, then the workers start (first started_at →"
        f" last completed_at); burst = N submitted while they run (first created_at → last"
        f" completed_at); concurrency {settings['concurrency_per_process']} per worker",
        f"{'db':<9} {'workers':<10} {'mode':<7} {'N':>4} {'enqueue s':>9} {'s':>7} {'done/s':>7}"
        f" {'cores: ours':>11} {'machine':>7}   CPU ms per generation",
    ]
    for t in report["throughput"]:
        cpu = "  ".join(f"{k} {v:.1f}" for k, v in t["cpu_ms_per_job"].items())
        lines.append(
            f"{t['database']:<9} {t['topology']:<10} {t['mode']:<7} {t['jobs']:>4}"
            f" {t['enqueue_s']:>9.2f} {t['seconds']:>7.2f} {t['completed_per_s']:>7.1f}"
            f" {t['cores_busy']['measured_processes']:>11.2f}"
            f" {t['cores_busy']['whole_machine']:>7.2f}   {cpu}"
        )
    for s in report.get("scaling", []):
        lines.append(
            f"{s['database']} {s['mode']}: 4 workers ÷ 1 worker = {s['ratio']:.2f}"
            f" ({'grows' if s['grows'] else 'does NOT grow'}; threshold ×{GROWTH_THRESHOLD:g})"
        )
    for skipped in report["skipped"]:
        lines.append(f"{skipped['database']}: skipped ({skipped['reason']})")
    slow = report.get("slow_scaling", [])
    if slow:
        lines += ["", f"slow upstream (~1.3 s per job), {SLOW_JOBS} queued, drained by N workers"]
        for row in slow:
            lines.append(
                f"  {row['database']:<9} {row['worker_processes']} worker(s) x"
                f" {row['concurrency_per_process']}: {row['completed_per_s']:6.1f}/s"
                f" ({row['jobs']} in {row['seconds']:.1f} s)"
            )
    for m in report.get("memory", []):
        marks = "  ".join(f"{done}: {mb:.0f}" for done, mb in m["rss_mb_when_done"].items())
        lines += [
            "",
            f"memory: {m['jobs']} queued generations drained by 1 worker process"
            f" (concurrency {m['concurrency']}) on {m['database']} in {m['seconds']:.1f} s",
            f"  worker RSS MiB: ready {m['rss_ready_mb']:.0f}, peak sampled"
            f" {m['rss_peak_mb']:.0f} (process tree {m['tree_rss_peak_mb']:.0f}), kernel peak"
            f" VmHWM {m['vmhwm_mb']:.0f}; after N done: {marks}",
        ]
    render = report.get("render")
    if render:
        lines += ["", "local renderer (bench/bench_render.py; median seconds)"]
        lines.append(f"{'kind':<6} {'resolution':<10} {'size':<10} {'seconds':>8} {'fps':>6}")
        for row in render["results"]:
            fps = row.get("frames_per_second", "")
            lines.append(
                f"{row['kind']:<6} {row['resolution']:<10} {row['size']:<10}"
                f" {row['seconds']:>8} {fps!s:>6}"
            )
    m = report["machine"]
    lines.append(
        f"{m['cpus']} CPUs shared with other work; load average {m['loadavg_1m_at_start']} →"
        f" {m.get('loadavg_1m_at_end', '?')}"
    )
    return "\n".join(lines)


# --- command line -------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_engine", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument(
        "--render",
        action="store_true",
        help="also run bench/bench_render.py and include its table (adds ~75 s)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=SCENARIOS,
        default=list(SCENARIOS),
        help="engine: dispatch and throughput per topology; slow: 1 vs 4 workers with a slow"
        " upstream; memory: the 1,000-generation drain (default: all)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--output", type=Path, help="also write the JSON report to this file")
    parser.add_argument("--check", action="store_true", help="exit 2 if a target is missed")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile the workers instead (step timings, dispatch split, cProfile)",
    )
    parser.add_argument(
        "--profile-workers",
        type=int,
        nargs="+",
        default=[1, 4],
        help="worker process counts to profile, 0 = the embedded worker (default 1 4)",
    )
    parser.add_argument("--keep-profiles", type=Path, help="copy the probes' raw output here")
    parser.add_argument("--serve-fal-fake", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--fal-polls", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--profiled-worker", nargs=2, metavar=("OUT", "MODE"), help=argparse.SUPPRESS
    )
    parser.add_argument("vivix_args", nargs="*", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_fal_fake:
        serve_fal_fake(args.serve_fal_fake, args.fal_polls)
        return 0
    if args.profiled_worker:
        out, mode = args.profiled_worker
        return run_profiled_worker(Path(out), mode, args.vivix_args)
    databases = ("sqlite", "postgres") if args.db == "both" else (args.db,)
    if args.profile:
        try:
            with event_loop_runner() as runner:
                print(runner.run(profile_all(databases, args.profile_workers, args.keep_profiles)))
        except BenchError as exc:
            log(f"profile failed: {exc}")
            return 1
        return 0
    try:
        with event_loop_runner() as runner:
            report = runner.run(bench_all(databases, set(args.only)))
        if args.render:
            log("local renderer (bench/bench_render.py):")
            report["render"] = run_render_benchmark()
    except BenchError as exc:
        log(f"benchmark failed: {exc}")
        return 1
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n", "utf-8")
    print(json.dumps(report, indent=2) if args.json else render_tables(report))
    missed = [d for d in report["dispatch"] if d["met"] is False]
    missed += [s for s in report["scaling"] if not s["grows"]]
    if args.check and missed:
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
