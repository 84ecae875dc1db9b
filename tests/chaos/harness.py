"""The chaos harness: the whole system under injected faults, then audited.

On PostgreSQL + Redis, with 2 API processes (`vivix serve --no-worker`) and 3 worker
processes (`vivix worker`), a steady submit load runs against a fake upstream (Runware's
protocol, jobs of a few seconds). Every round kills a random worker or API process with
SIGKILL (and starts it again), and cuts the database's or Redis's connections for a few
seconds through a TCP proxy the harness owns (every process reaches PostgreSQL and Redis
only through it). After the last round the load stops, the queue drains and `vivix
audit` checks the money. The report: rounds, submits, kills, cuts, generations lost,
credits off, upstream jobs submitted twice — the last three must be 0.

Clients behave as the API asks them to: every logical submit carries an Idempotency-Key
and is retried with it (connection errors, 5xx, 429) until it has a definitive answer, so
each maps to exactly one generation however often its request was cut.

    python -m tests.chaos --rounds 100          # the long run (see bench/README.md)
    python -m tests.chaos --rounds 3 --json     # what CI runs (tests/chaos/test_chaos.py)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.engine import make_url

from tests.processes import free_port, server_env
from tests.tcp_proxy import ThreadedTcpProxy
from vivix.kit.db import null_pool_engine

MODEL = "chaos-image"
RUNWARE_KEY = "rw-chaos-key-0123456789"
CATALOG = f"""
mode = "extend"
[[models]]
slug = "{MODEL}"
name = "Chaos image"
category = "image"
creator = "test"
description = "One Runware route to the chaos run's fake upstream."
deadline_seconds = 600
default_tiers = ["pro", "ultimate"]
[models.params]
prompt = {{ type = "string", required = true, max_length = 2000 }}
[[models.pricing]]
credits = 3
[[models.routes]]
provider = "runware"
upstream_model = "runware:100@1"
"""
FINAL = ("completed", "failed", "canceled")


@dataclass
class ChaosConfig:
    postgres_url: str  # an admin URL of the server; a database is created and dropped
    redis_url: str
    workdir: Path
    rounds: int = 3
    round_seconds: float = 6.0
    submits_per_second: float = 4.0
    job_seconds: float = 2.0
    cut_seconds: float = 2.0
    api_processes: int = 2
    worker_processes: int = 3
    drain_timeout_s: float = 240.0
    seed: int = 11


@dataclass
class ChaosReport:
    rounds: int = 0
    submits: int = 0
    generations: int = 0
    kills: Counter[str] = field(default_factory=Counter)
    cuts: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    unanswered: int = 0
    credits_off: int = 0
    audit_problems: list[dict[str, Any]] = field(default_factory=list)
    upstream_jobs: int = 0
    submitted_twice: int = 0
    retried_requests: int = 0
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.unanswered == 0
            and self.credits_off == 0
            and self.submitted_twice == 0
        )

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            ok=self.ok,
            kills=dict(self.kills),
            cuts=dict(self.cuts),
            outcomes=dict(self.outcomes),
        )
        return data

    def summary(self) -> str:
        kills = ", ".join(f"{n} {kind}" for kind, n in sorted(self.kills.items()))
        cuts = ", ".join(f"{n} {kind}" for kind, n in sorted(self.cuts.items()))
        outcomes = ", ".join(f"{n} {kind}" for kind, n in sorted(self.outcomes.items()))
        return (
            f"rounds {self.rounds} | submits {self.submits} ({self.retried_requests} requests "
            f"retried) | generations {self.generations}: {outcomes}\n"
            f"kills: {kills} | cuts: {cuts}\n"
            f"generations lost {self.lost} | submits unanswered {self.unanswered} | "
            f"credits off {self.credits_off} | upstream jobs {self.upstream_jobs}, submitted "
            f"twice {self.submitted_twice} | {self.seconds:.0f} s ("
            + ", ".join(f"{name} {s:.0f} s" for name, s in self.phases.items())
            + ") | "
            + ("OK" if self.ok else "FAILED")
        )


class Process:
    """A child process of the harness, output in a log file, killable and restartable."""

    def __init__(
        self, name: str, command: list[str], env: dict[str, str], logs: Path, port: int = 0
    ) -> None:
        self.name, self.command, self.env, self.logs, self.port = name, command, env, logs, port
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = (self.logs / f"{self.name}.log").open("ab")
        with log:
            self.popen = subprocess.Popen(
                self.command,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


class Load:
    """The clients: `rate` logical submits a second, each retried with its Idempotency-Key
    until it has a definitive answer, on an event loop in a thread of its own."""

    def __init__(self, api_urls: list[str], key: str, rate: float, rng: random.Random) -> None:
        self.api_urls, self.key, self.rate, self.rng = api_urls, key, rate, rng
        self.answers: dict[str, str | None] = {}  # idempotency key -> generation id
        self.retried = 0
        self._stop = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._run(),))

    def start(self) -> None:
        self._thread.start()

    def stop(self, answer_within_s: float) -> None:
        """Stop submitting; let every started submit get its answer (or give up)."""
        self._deadline = time.monotonic() + answer_within_s
        self._stop.set()
        self._thread.join(answer_within_s + 30)
        self._loop.close()

    async def _run(self) -> None:
        self._deadline = float("inf")
        tasks: list[asyncio.Task[None]] = []
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=20)
        async with httpx.AsyncClient(timeout=httpx.Timeout(10.0), limits=limits) as http:
            while not self._stop.is_set():
                tasks.append(asyncio.create_task(self._submit(http, str(uuid.uuid4()))))
                await asyncio.sleep(self.rng.expovariate(self.rate))
            await asyncio.gather(*tasks)

    async def _submit(self, http: httpx.AsyncClient, key: str) -> None:
        self.answers[key] = None
        body = {"model": MODEL, "prompt": f"chaos {key}"}
        headers = {"Authorization": f"Bearer {self.key}", "Idempotency-Key": key}
        delay = 0.2
        while time.monotonic() < self._deadline:
            url = self.rng.choice(self.api_urls)
            try:
                response = await http.post(f"{url}/api/v1/generate", json=body, headers=headers)
            except httpx.HTTPError:
                response = None
            if response is not None and response.status_code in (200, 201):
                self.answers[key] = response.json()["generation_id"]
                return
            if response is not None and response.status_code < 500 and response.status_code != 429:
                raise AssertionError(f"submit refused for good: {response.text}")
            self.retried += 1
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 1.5)


class ChaosRun:
    def __init__(self, config: ChaosConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.report = ChaosReport()
        self.database = f"vivix_chaos_{uuid.uuid4().hex[:10]}"
        admin = make_url(_asyncpg(config.postgres_url))
        self.admin_url = admin.render_as_string(hide_password=False)
        self.direct_url = admin.set(database=self.database).render_as_string(hide_password=False)
        self.logs = config.workdir / "logs"
        self.processes: list[Process] = []

    def run(self) -> ChaosReport:
        started = self._started = time.monotonic()
        self.logs.mkdir(parents=True, exist_ok=True)
        asyncio.run(_execute(self.admin_url, f'CREATE DATABASE "{self.database}"'))
        try:
            self._run()
        finally:
            asyncio.run(
                _execute(self.admin_url, f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            )
        self.report.seconds = time.monotonic() - started
        return self.report

    # -- set-up ---------------------------------------------------------------------------

    def _run(self) -> None:
        config = self.config
        pg = make_url(self.admin_url)
        db_proxy = ThreadedTcpProxy(pg.host or "127.0.0.1", pg.port or 5432)
        redis_host, redis_port = _host_port(config.redis_url, 6379)
        redis_proxy = ThreadedTcpProxy(redis_host, redis_port)
        self.proxies = {"database": db_proxy, "redis": redis_proxy}
        try:
            self._run_with(db_proxy, redis_proxy)
        finally:
            for process in self.processes:  # before their database goes away
                process.stop()
            db_proxy.close()
            redis_proxy.close()

    def _env(
        self, db_proxy: ThreadedTcpProxy, redis_proxy: ThreadedTcpProxy, provider: int
    ) -> dict[str, str]:
        catalog = self.config.workdir / "catalog.toml"
        catalog.write_text(CATALOG)
        through_proxy = make_url(self.direct_url).set(host="127.0.0.1", port=db_proxy.port)
        return server_env(
            DATABASE_URL=through_proxy.render_as_string(hide_password=False),
            REDIS_URL=f"redis://127.0.0.1:{redis_proxy.port}/0",
            DATA_DIR=str(self.config.workdir / "data"),
            STORAGE_URL=(self.config.workdir / "outputs").resolve().as_uri(),
            SECRET_KEY="chaos-secret-key",
            CATALOG_PATH=str(catalog),
            LOG_LEVEL="warning",
            PROVIDERS__RUNWARE__API_KEY=RUNWARE_KEY,
            PROVIDERS__RUNWARE__BASE_URL=f"http://127.0.0.1:{provider}",
            DB__POOL_SIZE="5",
            DB__MAX_OVERFLOW="20",
            WORKER__CONCURRENCY="8",
            WORKER__LEASE_SECONDS="6",
            WORKER__HEARTBEAT_SECONDS="1.5",
            WORKER__POLL_INTERVAL_SECONDS="0.5",
            WORKER__RETRY_BACKOFF_SECONDS="0.5",
            WORKER__MAX_ATTEMPTS="25",
            WORKER__ROUTE_ATTEMPTS="5",
            WORKER__SHUTDOWN_GRACE_SECONDS="2",
            CIRCUIT__FAILURE_THRESHOLD="1000",
        )

    def _run_with(self, db_proxy: ThreadedTcpProxy, redis_proxy: ThreadedTcpProxy) -> None:
        config = self.config
        provider_port = free_port()
        env = self._env(db_proxy, redis_proxy, provider_port)
        direct_env = {**env, "VIVIX_DATABASE_URL": self.direct_url}
        key = asyncio.run(_prepare(self.direct_url, env))

        provider = Process(
            "provider",
            [sys.executable, "-m", "tests.chaos.provider", "--port", str(provider_port),
             "--seconds", str(config.job_seconds), "--api-key", RUNWARE_KEY],
            env, self.logs,
        )  # fmt: skip
        provider.start()
        self.processes.append(provider)
        _wait_http(f"http://127.0.0.1:{provider_port}/_chaos/stats")

        self.apis = []
        for index in range(config.api_processes):
            port = free_port()
            api_env = {**env, "VIVIX_PUBLIC_URL": f"http://127.0.0.1:{port}"}
            api = Process(
                f"api-{index + 1}",
                [sys.executable, "-m", "vivix", "serve", "--no-worker", "--host", "127.0.0.1",
                 "--port", str(port), "--json"],
                api_env, self.logs, port,
            )  # fmt: skip
            api.start()
            self.apis.append(api)
        self.workers = [
            Process(f"worker-{i + 1}", [sys.executable, "-m", "vivix", "worker"], env, self.logs)
            for i in range(config.worker_processes)
        ]
        for worker in self.workers:
            worker.start()
        self.processes += [*self.apis, *self.workers]
        api_urls = [f"http://127.0.0.1:{api.port}" for api in self.apis]
        for url in api_urls:
            _wait_http(f"{url}/healthz")

        load = Load(api_urls, key, config.submits_per_second, random.Random(config.seed + 1))
        self._loaded = time.monotonic()
        self.report.phases["start"] = self._loaded - self._started
        load.start()
        try:
            for number in range(config.rounds):
                self._round(number)
                self.report.rounds += 1
        finally:
            db_proxy.restore()
            redis_proxy.restore()
            for process in self.processes:  # everything up for the drain
                if process.popen is None or process.popen.poll() is not None:
                    process.start()
            load.stop(answer_within_s=60)
        self.report.phases["rounds"] = time.monotonic() - self._loaded
        self._drain_and_check(load, provider_port, direct_env)

    # -- faults ---------------------------------------------------------------------------

    def _round(self, number: int) -> None:
        """One kill and one cut, spread over the round while the load runs."""
        seconds = self.config.round_seconds
        kill = ("worker", "api")[number % 2] if number < 2 else self.rng.choice(("worker", "api"))
        cut = ("database", "redis")[number % 2]
        started = time.monotonic()
        time.sleep(self.rng.uniform(0, seconds / 4))
        victim = self.rng.choice(self.workers if kill == "worker" else self.apis)
        victim.kill()
        self.report.kills[kill] += 1
        time.sleep(self.rng.uniform(0.2, 1.0))
        victim.start()
        time.sleep(max(0.0, started + seconds / 3 - time.monotonic()))
        proxy = self.proxies[cut]
        proxy.cut()
        self.report.cuts[cut] += 1
        time.sleep(self.config.cut_seconds)
        proxy.restore()
        time.sleep(max(0.0, started + seconds - time.monotonic()))

    # -- the verdict ----------------------------------------------------------------------

    def _drain_and_check(self, load: Load, provider_port: int, env: dict[str, str]) -> None:
        report = self.report
        drained = time.monotonic()
        report.submits = len(load.answers)
        report.retried_requests = load.retried
        report.unanswered = sum(1 for generation in load.answers.values() if generation is None)
        deadline = time.monotonic() + self.config.drain_timeout_s
        while asyncio.run(_count_open(self.direct_url)) and time.monotonic() < deadline:
            time.sleep(1.0)
        report.phases["drain"] = time.monotonic() - drained
        statuses = asyncio.run(_statuses(self.direct_url))
        report.generations = len(statuses)
        report.outcomes = Counter(statuses.values())
        answered = {g for g in load.answers.values() if g is not None}
        # Lost: answered but not finished (or not there at all), and rows nobody asked for.
        report.lost = sum(1 for g in answered if statuses.get(g) not in FINAL)
        report.lost += len(set(statuses) - answered)
        audit = json.loads(self._vivix(env, "audit", "--json", check=False))
        report.audit_problems = audit["problems"]
        report.credits_off = len(audit["problems"])
        stats = httpx.get(f"http://127.0.0.1:{provider_port}/_chaos/stats", timeout=10).json()
        report.upstream_jobs = stats["submissions"]
        report.submitted_twice = sum(1 for count in stats["by_prompt"].values() if count > 1)

    def _vivix(self, env: dict[str, str], *args: str, check: bool = True) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "vivix", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"vivix {' '.join(args)} failed: {done.stdout}{done.stderr}")
        return done.stdout


def _asyncpg(url: str) -> str:
    return "postgresql+asyncpg://" + url.split("://", 1)[1]


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parsed = httpx.URL(url)
    return parsed.host or "127.0.0.1", parsed.port or default_port


def _wait_http(url: str, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not come up within {timeout_s} s")
        time.sleep(0.2)


async def _prepare(database_url: str, env: dict[str, str]) -> str:
    """Schema, the chaos account (credits and limits no load reaches) and its key."""
    from vivix.admin import service as admin
    from vivix.migrations import upgrade_to_head
    from vivix.runtime import build_runtime, close_runtime
    from vivix.settings import load_settings

    await upgrade_to_head(database_url)
    settings = load_settings(
        database_url=database_url,
        data_dir=env["VIVIX_DATA_DIR"],
        catalog_path=env["VIVIX_CATALOG_PATH"],
        secret_key=env["VIVIX_SECRET_KEY"],
        log_level="warning",
    )
    runtime = await build_runtime(settings)
    try:
        await admin.create_account(runtime, "chaos", "ultimate", 10**9)
        await admin.update_account(
            runtime, "chaos", concurrent_jobs=100_000, calls_per_minute=1_000_000
        )
        created = await admin.create_key(runtime, "chaos", name="chaos load")
    finally:
        await close_runtime(runtime)
    return str(created["key"])


async def _execute(url: str, statement: str) -> None:
    engine = null_pool_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


async def _count_open(url: str) -> int:
    engine = null_pool_engine(url)
    try:
        async with engine.connect() as connection:
            found = await connection.execute(
                text("SELECT count(*) FROM generations WHERE status IN ('pending', 'processing')")
            )
            return int(found.scalar_one())
    finally:
        await engine.dispose()


async def _statuses(url: str) -> dict[str, str]:
    engine = null_pool_engine(url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(text("SELECT id, status FROM generations"))
            return {str(row.id): str(row.status) for row in rows}
    finally:
        await engine.dispose()
