"""Scale-out: completed generations per second against the number of worker processes.

    .venv/bin/python -m bench.bench_scale                 # N = 1, 2, 4, 8 (~50 min here)
    .venv/bin/python -m bench.bench_scale --workers 1 2 --in-flight 2000 --window 30

The deployment is the production one, on one machine: PostgreSQL (a fresh database per
N, `vivix migrate`d), Redis (rate limits), an S3-compatible store (moto's server, a
process of its own, a bucket per N), 2 API processes (`vivix serve --no-worker`) and N
worker processes (`vivix worker`). The provider is a Runware fake (Runware's public
protocol, tests/fakes/runware.py) in its own process whose jobs take 2-10 s of wall clock
(uniform), and which accepts any number at once: the provider's latency is what bounds
throughput, as with a real provider.

For each N: one account (an operator-set limit of 1,000,000 calls a minute and 20,000
concurrent jobs, so neither limit throttles the submits) submits `--in-flight` (10,000)
generations through the two API processes, before any worker runs, so all of them are in
flight at once. Then the N workers start; once every one of them runs (on a loaded machine
N processes importing Vivix take minutes) and `--warmup` seconds later (the first jobs
take up to 10 s) completions are counted over a steady `--window` (the queue never runs dry in
it: nothing is drained). Each N takes ~12 minutes on a loaded 2-core machine, most of it
the 10,000 submits. Reported per N:

- completed/s in the window, and its ratio to N = 1 (ideal: N);
- queue wait p50 / p99 (submit → first claim) and run time p50 / p99 (claim → completed)
  of the generations that started / completed in the window, from the database;
- RSS per worker process (with its children), sampled through the window, 10,000 in flight;
- lost: generations the API accepted that the database doesn't have, completed ones whose
  output is not in the bucket, plus the problems
  `vivix audit` (the money audit: balances = ledger, holds = open generations, every final
  generation settled once) reports at the end. Must be 0.

Workers run `--concurrency` (8) jobs each, so the ideal rate is N × 8 / (mean job time).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    REPO_ROOT,
    BenchError,
    ServerProcess,
    bench_postgres_admin_url,
    clean_environment,
    free_port,
    fresh_postgres_database,
    machine_description,
    percentile,
    process_tree_rss,
    wait_listening,
)

MODEL = "scale-image"
UPSTREAM = "runware:100@1"
RUNWARE_KEY = "rw-scale-key"
CATALOG = f"""
mode = "extend"
[[models]]
slug = "{MODEL}"
name = "Scale image"
category = "image"
creator = "bench"
description = "One Runware route to the scale bench's fake upstream (2-10 s jobs)."
deadline_seconds = 3600
default_tiers = ["pro", "ultimate"]
[models.params]
prompt = {{ type = "string", required = true, max_length = 2000 }}
[[models.pricing]]
credits = 3
[[models.routes]]
provider = "runware"
upstream_model = "{UPSTREAM}"
"""
REDIS_URL = os.environ.get("VIVIX_BENCH_REDIS_URL", "redis://127.0.0.1:6379/7")
S3_REGION = "us-east-1"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the provider ------------------------------------------------------------------------------


def serve_provider(port: int, min_s: float, max_s: float) -> None:
    """The Runware fake, each task rendering for a uniform 2-10 s (`python -m
    bench.bench_scale --serve-provider PORT`)."""
    import uvicorn
    from tests.fakes.runware import FakeRunware

    rng = random.Random(7)

    class SlowRunware(FakeRunware):
        # The fake reads this knob per task, when it accepts the task.
        @property  # type: ignore[override]
        def seconds_before_done(self) -> float:
            return rng.uniform(min_s, max_s)

        @seconds_before_done.setter
        def seconds_before_done(self, _value: float | None) -> None:
            pass

    fake = SlowRunware(RUNWARE_KEY)
    uvicorn.run(fake.app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# -- one deployment ----------------------------------------------------------------------------


@dataclass
class Figures:
    workers: int
    concurrency: int
    in_flight: int
    submitted: int
    submit_seconds: float
    window_s: float
    completed_in_window: int
    completed_per_s: float
    queue_wait_p50_s: float
    queue_wait_p99_s: float
    run_p50_s: float
    run_p99_s: float
    worker_rss_mb: list[float] = field(default_factory=list)  # per process, max over samples
    pending_at_end: int = 0
    lost: int = 0
    orphan_objects: int = 0  # outputs stored by a job the shutdown stopped before it committed
    load_1m: float = 0.0  # the machine's 1-minute load average at the end of the window
    audit_ok: bool = False
    audit_problems: int = 0


class Vivix:
    """`vivix` commands against one deployment's settings."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def json(self, *args: str) -> Any:
        done = subprocess.run(
            [sys.executable, "-m", "vivix", *args, "--json"],
            env=self.env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode not in (0, 1):
            raise BenchError(f"vivix {' '.join(args)} failed: {done.stdout}\n{done.stderr}")
        return json.loads(done.stdout)


@contextlib.contextmanager
def moto_server(workdir: Path) -> Iterator[str]:
    port = free_port()
    with (workdir / "moto.log").open("wb") as out:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "moto_server"), "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/moto-api/", timeout=1).status_code < 500:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise BenchError("moto_server did not start")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)
        if process.poll() is None:
            process.kill()


def create_bucket(endpoint: str, bucket: str) -> None:
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        region_name=S3_REGION,
    )
    s3.create_bucket(Bucket=bucket)


def list_objects(endpoint: str, bucket: str) -> set[str]:
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        region_name=S3_REGION,
    )
    keys: set[str] = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys.update(item["Key"] for item in page.get("Contents", []))
    return keys


async def submit_all(
    api_urls: Sequence[str], key: str, count: int, concurrency: int = 48
) -> list[str]:
    """`count` submits spread over the API processes; their generation ids."""
    ids: list[str] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(count):
        queue.put_nowait(index)
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def sender(http: httpx.AsyncClient, url: str) -> None:
        while True:
            try:
                index = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            body = {"model": MODEL, "prompt": f"scale {index}"}
            idempotency = {"Idempotency-Key": f"scale-{index}"}
            for attempt in range(10):
                try:
                    response = await http.post(
                        f"{url}/api/v1/generate", json=body, headers={**headers, **idempotency}
                    )
                except httpx.HTTPError:
                    await asyncio.sleep(0.2 * (attempt + 1))
                    continue
                if response.status_code in (200, 201):
                    ids.append(response.json()["generation_id"])
                    break
                raise BenchError(f"submit refused: {response.status_code} {response.text}")
            else:
                raise BenchError("a submit got no answer after 10 attempts")

    async with httpx.AsyncClient(timeout=30, limits=limits) as http:
        await asyncio.gather(
            *(sender(http, api_urls[i % len(api_urls)]) for i in range(concurrency))
        )
    return ids


async def wait_worker_running(process: ServerProcess, within_s: float = 600.0) -> None:
    """Until `vivix worker` says it runs (its first line: `worker <id> running N jobs`)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        process.check_alive()
        with contextlib.suppress(FileNotFoundError):
            if " running " in process.log_path.read_text("utf-8", errors="replace"):
                return
        await asyncio.sleep(0.5)
    raise BenchError(f"{process.name} did not start in {within_s:.0f}s:\n{process.log_tail()}")


class Database:
    def __init__(self, url: str) -> None:
        import asyncpg  # type: ignore[import-untyped]
        from sqlalchemy.engine import make_url

        self.dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._asyncpg = asyncpg

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        connection = await self._asyncpg.connect(self.dsn, timeout=10)
        try:
            return list(await connection.fetch(query, *args))
        finally:
            await connection.close()

    async def completed(self) -> int:
        rows = await self.fetch("SELECT count(*) FROM generations WHERE status = 'completed'")
        return int(rows[0][0])

    async def seconds(self, query: str, *args: Any) -> list[float]:
        return sorted(float(row[0]) for row in await self.fetch(query, *args))


async def run_one(args: argparse.Namespace, workers: int, workdir: Path) -> Figures:
    """One deployment with `workers` worker processes (`workdir` exists, empty)."""
    admin_url = bench_postgres_admin_url()
    bucket = f"scale-{uuid.uuid4().hex[:8]}"
    provider_port = free_port()
    provider = ServerProcess(
        "provider",
        [
            sys.executable, "-m", "bench.bench_scale", "--serve-provider", str(provider_port),
            "--job-seconds", str(args.job_seconds[0]), str(args.job_seconds[1]),
        ],
        env=clean_environment(),
        port=provider_port,
        log_path=workdir / "provider.log",
        health_path="/files/none",  # 404 once it listens (see wait_listening)
    )  # fmt: skip
    catalog = workdir / "catalog.toml"
    catalog.write_text(CATALOG)
    async with fresh_postgres_database(admin_url, "vivix_scale") as database_url:
        with moto_server(workdir) as s3:
            create_bucket(s3, bucket)
            env = clean_environment(
                VIVIX_DATABASE_URL=database_url,
                VIVIX_REDIS_URL=REDIS_URL,
                VIVIX_STORAGE_URL=f"s3://{bucket}/outputs",
                VIVIX_DATA_DIR=str(workdir / "data"),
                VIVIX_SECRET_KEY="scale-bench-secret",
                VIVIX_CATALOG_PATH=str(catalog),
                VIVIX_LOG_LEVEL="warning",
                VIVIX_PROVIDERS__RUNWARE__API_KEY=RUNWARE_KEY,
                VIVIX_PROVIDERS__RUNWARE__BASE_URL=f"http://127.0.0.1:{provider_port}",
                VIVIX_PROVIDERS__RUNWARE__MAX_CONCURRENCY="64",
                VIVIX_DB__POOL_SIZE="4",
                VIVIX_DB__MAX_OVERFLOW="6",
                # Stopping after the window: hand running jobs back instead of finishing them.
                VIVIX_WORKER__SHUTDOWN_GRACE_SECONDS="1",
                AWS_ENDPOINT_URL=s3,
                AWS_ACCESS_KEY_ID="bench",
                AWS_SECRET_ACCESS_KEY="bench",
                AWS_REGION=S3_REGION,
                AWS_ALLOW_HTTP="true",
            )
            vivix = Vivix(env)
            vivix.json("migrate")
            vivix.json("accounts", "create", "scale", "--credits", "1000000000")
            vivix.json(
                "accounts", "update", "scale",
                "--calls-per-minute", "1000000", "--concurrent-jobs", "20000",
            )  # fmt: skip
            key = vivix.json("keys", "create", "scale", "--name", "bench")["key"]
            apis = []
            for index in range(2):
                port = free_port()
                apis.append(
                    ServerProcess(
                        f"api-{index}",
                        [
                            sys.executable,
                            "-m",
                            "vivix",
                            "serve",
                            "--no-worker",
                            "--port",
                            str(port),
                        ],
                        env={**env, "VIVIX_PUBLIC_URL": f"http://127.0.0.1:{port}"},
                        port=port,
                        log_path=workdir / f"api-{index}.log",
                        health_path="/readyz",
                    )
                )
            worker_processes = [
                ServerProcess(
                    f"worker-{index}",
                    [
                        sys.executable,
                        "-m",
                        "vivix",
                        "worker",
                        "--concurrency",
                        str(args.concurrency),
                    ],
                    env={**env, "VIVIX_DB__POOL_SIZE": "3", "VIVIX_DB__MAX_OVERFLOW": "3"},
                    port=0,
                    log_path=workdir / f"worker-{index}.log",
                )
                for index in range(workers)
            ]
            everything = [provider, *apis, *worker_processes]
            try:
                provider.start()
                for api in apis:
                    api.start()
                await wait_listening(provider)
                for api in apis:
                    await api.wait_ready(180)
                log(f"N={workers}: submitting {args.in_flight} generations")
                started = time.monotonic()
                ids = await submit_all([a.base_url for a in apis], key, args.in_flight)
                submit_seconds = time.monotonic() - started
                log(f"N={workers}: {len(ids)} accepted in {submit_seconds:.0f} s; starting workers")
                for process in worker_processes:
                    process.start()
                # On a loaded machine N processes importing Vivix at once take minutes:
                # the warm-up counts from the moment every worker runs.
                for process in worker_processes:
                    await wait_worker_running(process)
                log(f"N={workers}: every worker runs; warming up {args.warmup:.0f} s")
                db = Database(database_url)
                await asyncio.sleep(args.warmup)
                for process in everything:
                    process.check_alive()
                window_start_wall = time.time()
                done_before = await db.completed()
                rss: list[list[int]] = [[] for _ in worker_processes]
                t0 = time.monotonic()
                while time.monotonic() - t0 < args.window:
                    await asyncio.sleep(min(5.0, args.window - (time.monotonic() - t0)))
                    for index, process in enumerate(worker_processes):
                        size = process_tree_rss(process.pid) if process.pid else None
                        if size is not None:
                            rss[index].append(size)
                window = time.monotonic() - t0
                load_1m = os.getloadavg()[0]
                done_after = await db.completed()
                window_end_wall = time.time()
                for process in everything:
                    process.check_alive()
            finally:
                for process in reversed(everything):
                    process.stop(30)
            waits = await db.seconds(
                "SELECT extract(epoch FROM started_at - created_at) FROM generations "
                "WHERE started_at BETWEEN to_timestamp($1) AND to_timestamp($2)",
                window_start_wall,
                window_end_wall,
            )
            runs = await db.seconds(
                "SELECT extract(epoch FROM completed_at - started_at) FROM generations "
                "WHERE status = 'completed' "
                "AND completed_at BETWEEN to_timestamp($1) AND to_timestamp($2)",
                window_start_wall,
                window_end_wall,
            )
            present = {
                str(row[0])
                for row in await db.fetch(
                    "SELECT id FROM generations WHERE id = ANY($1::text[])", ids
                )
            }
            pending = (
                await db.fetch(
                    "SELECT count(*) FROM generations WHERE status IN ('pending','processing')"
                )
            )[0][0]
            completed_total = await db.completed()
            # Every completed generation's outputs must be in the bucket (else: lost). A
            # job stopped between storing its output and committing (the 1 s shutdown
            # grace) leaves an object nothing refers to: counted, not a loss.
            listed = {key.removeprefix("outputs/") for key in list_objects(s3, bucket)}
            referenced = [
                str(row[0])
                for row in await db.fetch(
                    "SELECT o->>'key' FROM generations, json_array_elements(outputs::json) o "
                    "WHERE status = 'completed'"
                )
            ]
            missing_outputs = len([key for key in referenced if key not in listed])
            orphans = len(listed - set(referenced))
            audit = vivix.json("audit")
            log(
                f"N={workers}: {done_after - done_before} completed in {window:.0f} s; "
                f"{completed_total} completed in all, {len(listed)} objects in the bucket "
                f"({missing_outputs} outputs missing, {orphans} unreferenced); "
                f"audit {'ok' if audit['ok'] else 'FAILED'}"
            )
    completed = done_after - done_before
    return Figures(
        workers=workers,
        concurrency=args.concurrency,
        in_flight=args.in_flight,
        submitted=len(ids),
        submit_seconds=round(submit_seconds, 1),
        window_s=round(window, 1),
        completed_in_window=completed,
        completed_per_s=round(completed / window, 2),
        queue_wait_p50_s=round(percentile(waits, 50), 1),
        queue_wait_p99_s=round(percentile(waits, 99), 1),
        run_p50_s=round(percentile(runs, 50), 2),
        run_p99_s=round(percentile(runs, 99), 2),
        worker_rss_mb=[round(max(s) / 2**20, 1) for s in rss if s],
        pending_at_end=int(pending),
        lost=len(set(ids) - present) + missing_outputs,
        orphan_objects=orphans,
        load_1m=round(load_1m, 1),
        audit_ok=bool(audit["ok"]),
        audit_problems=len(audit.get("problems", [])),
    )


def table(results: list[Figures]) -> str:
    base = results[0].completed_per_s if results else 0
    lines = [
        "| N workers | completed/s | × N=1 | queue wait p50 / p99 | run p50 / p99 | RSS per worker (MiB) | lost | audit | load (1 min) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ratio = r.completed_per_s / base if base else float("nan")
        rss = f"{min(r.worker_rss_mb):.0f}-{max(r.worker_rss_mb):.0f}" if r.worker_rss_mb else "?"
        lines.append(
            f"| {r.workers} | {r.completed_per_s:.2f} | {ratio:.2f} | "
            f"{r.queue_wait_p50_s:.0f} s / {r.queue_wait_p99_s:.0f} s | "
            f"{r.run_p50_s:.1f} s / {r.run_p99_s:.1f} s | {rss} | {r.lost} | "
            f"{'ok' if r.audit_ok else f'{r.audit_problems} problems'} | {r.load_1m} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--concurrency", type=int, default=8, help="jobs per worker process")
    parser.add_argument("--in-flight", type=int, default=10_000)
    parser.add_argument("--warmup", type=float, default=20.0)
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--job-seconds", type=float, nargs=2, default=[2.0, 10.0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--serve-provider", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_provider is not None:
        serve_provider(args.serve_provider, *args.job_seconds)
        return 0
    import tempfile

    machine = machine_description()
    results: list[Figures] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vivix-scale-") as tmp:
        root = args.workdir or Path(tmp)
        for workers in args.workers:
            workdir = root / f"n{workers}"
            workdir.mkdir(parents=True, exist_ok=True)
            results.append(asyncio.run(run_one(args, workers, workdir)))
            log(table(results))
    report = {
        "machine": machine,
        "seconds": round(time.monotonic() - started),
        "settings": {
            "concurrency": args.concurrency,
            "in_flight": args.in_flight,
            "warmup_s": args.warmup,
            "window_s": args.window,
            "job_seconds": args.job_seconds,
        },
        "results": [asdict(r) for r in results],
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(table(results))
        print(
            f"\n{machine['cpus']} CPUs, load {machine['loadavg_1m_at_start']} at start; "
            f"{report['seconds']} s in all"
        )
    bad = [r for r in results if r.lost or not r.audit_ok]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
