"""Shared benchmark plumbing: a closed-loop HTTP load generator, server subprocesses, and
percentiles.

Every figure a benchmark prints is a ratio against a baseline measured in the same run
with this same load generator, so machine noise mostly cancels out.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httptools
import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


class BenchError(Exception):
    """A benchmark could not produce a trustworthy figure (errors, a server that died)."""


# --- statistics ---------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, linearly interpolated."""
    if not sorted_values:
        return math.nan
    rank = (len(sorted_values) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


@dataclass
class LoadResult:
    """What one measurement window saw. Results of several windows can be merged."""

    requests: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    server_cpu_s: float | None = 0.0
    # CPU of the database's own processes (PostgreSQL backends); SQLite runs in the server.
    db_cpu_s: float = 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def cpu_us_per_request(self) -> float | None:
        """Server plus database CPU per request: all that serving it cost but the client."""
        if self.server_cpu_s is None or not self.requests:
            return None
        return (self.server_cpu_s + self.db_cpu_s) / self.requests * 1e6

    def latency_ms(self, q: float) -> float:
        return percentile(sorted(self.latencies_ms), q)

    def merge(self, other: LoadResult) -> LoadResult:
        cpu = (
            None
            if self.server_cpu_s is None or other.server_cpu_s is None
            else self.server_cpu_s + other.server_cpu_s
        )
        return LoadResult(
            requests=self.requests + other.requests,
            seconds=self.seconds + other.seconds,
            latencies_ms=self.latencies_ms + other.latencies_ms,
            errors=self.errors + other.errors,
            error_samples=(self.error_samples + other.error_samples)[:5],
            statuses=self.statuses + other.statuses,
            server_cpu_s=cpu,
            db_cpu_s=self.db_cpu_s + other.db_cpu_s,
        )

    def summary(self) -> dict[str, Any]:
        cpu = self.cpu_us_per_request
        return {
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "rps": round(self.rps, 1),
            "p50_ms": round(self.latency_ms(50), 2),
            "p99_ms": round(self.latency_ms(99), 2),
            "errors": self.errors,
            "cpu_us_per_request": None if cpu is None else round(cpu, 1),
            "db_cpu_us_per_request": (
                round(self.db_cpu_s / self.requests * 1e6, 1) if self.requests else None
            ),
        }


# --- load generator -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpCall:
    """One request, prepared up front so the client spends no time building bodies."""

    method: str
    path: str
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


NextCall = Callable[[], HttpCall]


def cycling(calls: Iterable[HttpCall]) -> NextCall:
    """Hand out the given calls round-robin (the event loop is single-threaded, so a plain
    iterator is safe to share between the connection tasks)."""
    items = list(calls)
    if not items:
        raise ValueError("no calls to cycle through")
    index = 0

    def next_call() -> HttpCall:
        nonlocal index
        call = items[index]
        index = (index + 1) % len(items)
        return call

    return next_call


def new_client(base_url: str, concurrency: int) -> httpx.AsyncClient:
    # HTTP/1.1 keep-alive, exactly one pooled connection per concurrent task.
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30.0, http2=False)


Send = Callable[[HttpCall], Awaitable[tuple[int, bytes]]]


class _HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection that sends prepared request bytes and parses the
    answer with httptools (the parser uvicorn uses): a few tens of µs of client CPU per
    request, where httpx spends about a millisecond."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.body = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((self.parser.get_status_code(), bytes(self.body)))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail(exc or ConnectionError("connection closed by the server"))

    def _fail(self, exc: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self.body = bytearray()
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.waiter


class RawHttpClient:
    """`concurrency` keep-alive connections, one per load task, each used strictly in
    turn (no pipelining). A connection the server closed is reopened for the next call."""

    def __init__(self, base_url: str, concurrency: int) -> None:
        parsed = httpx.URL(base_url)
        self.host = parsed.host
        self.port = parsed.port or 80
        self.concurrency = concurrency
        self._prepared: dict[int, bytes] = {}
        self._connections: list[_HttpConnection] = []

    async def __aenter__(self) -> RawHttpClient:
        self._connections = [await self._open() for _ in range(self.concurrency)]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for connection in self._connections:
            if connection.transport is not None:
                connection.transport.close()

    async def _open(self) -> _HttpConnection:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(_HttpConnection, self.host, self.port)
        return protocol

    def _request_bytes(self, call: HttpCall) -> bytes:
        prepared = self._prepared.get(id(call))
        if prepared is None:
            body = call.body or b""
            lines = [f"{call.method} {call.path} HTTP/1.1", f"host: {self.host}:{self.port}"]
            lines += [f"{k}: {v}" for k, v in call.headers.items()]
            if call.body is not None or call.method in ("POST", "PUT", "PATCH"):
                lines.append(f"content-length: {len(body)}")
            prepared = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
            self._prepared[id(call)] = prepared
        return prepared

    def senders(self) -> list[Send]:
        def sender(index: int) -> Send:
            async def send(call: HttpCall) -> tuple[int, bytes]:
                connection = self._connections[index]
                if connection.transport is None:
                    connection = self._connections[index] = await self._open()
                return await connection.exchange(self._request_bytes(call))

            return send

        return [sender(i) for i in range(self.concurrency)]


class HttpxLoadClient:
    """The same load through httpx (`--client httpx`): friendlier, but its own CPU cost
    per request is larger than a minimal server's, so it measures itself."""

    def __init__(self, base_url: str, concurrency: int) -> None:
        self.client = new_client(base_url, concurrency)
        self.concurrency = concurrency

    async def __aenter__(self) -> HttpxLoadClient:
        await self.client.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.client.__aexit__(None, None, None)

    def senders(self) -> list[Send]:
        async def send(call: HttpCall) -> tuple[int, bytes]:
            response = await self.client.request(
                call.method, call.path, content=call.body, headers=call.headers
            )
            return response.status_code, response.content

        return [send] * self.concurrency


CLIENTS: dict[str, type[RawHttpClient] | type[HttpxLoadClient]] = {
    "raw": RawHttpClient,
    "httpx": HttpxLoadClient,
}


async def _drive(senders: Sequence[Send], next_call: NextCall, seconds: float) -> LoadResult:
    """Closed loop: one task per sender sends a request, waits for the answer, repeats,
    until the deadline. Requests still in flight at the deadline are completed and counted
    (the window is measured until the last one returns)."""
    result = LoadResult()
    start = time.perf_counter()
    deadline = start + seconds

    async def connection_task(send: Send) -> None:
        while time.perf_counter() < deadline:
            call = next_call()
            sent = time.perf_counter()
            try:
                status, body = await send(call)
            except (OSError, httpx.HTTPError, httptools.HttpParserError) as exc:
                result.errors += 1
                if len(result.error_samples) < 5:
                    result.error_samples.append(f"{call.method} {call.path}: {exc!r}")
                continue
            result.latencies_ms.append((time.perf_counter() - sent) * 1000)
            result.requests += 1
            result.statuses[status] += 1
            if not 200 <= status < 300:
                result.errors += 1
                if len(result.error_samples) < 5:
                    text = body[:300].decode("utf-8", "replace")
                    result.error_samples.append(f"{call.method} {call.path} -> {status}: {text}")

    await asyncio.gather(*(connection_task(send) for send in senders))
    result.seconds = time.perf_counter() - start
    return result


async def run_load(
    base_url: str,
    next_call: NextCall,
    *,
    concurrency: int,
    seconds: float,
    warmup: float,
    server_pid: int | None = None,
    db_pids: Callable[[], Iterable[int]] | None = None,
    client: str = "raw",
) -> LoadResult:
    """Warm up (connections, caches, the server's lazy imports), then measure for
    `seconds`. With `server_pid`, also records the server's CPU time during the window,
    which is less sensitive to other load on the machine than throughput is; with
    `db_pids` (called at both ends of the window), the database processes' CPU too."""
    async with CLIENTS[client](base_url, concurrency) as load_client:
        senders = load_client.senders()
        if warmup > 0:
            warm = await _drive(senders, next_call, warmup)
            _raise_on_errors(warm, f"warm-up against {base_url}")
        db_before = _cpu_by_pid(db_pids() if db_pids else ())
        cpu_before = process_cpu_seconds(server_pid)
        result = await _drive(senders, next_call, seconds)
        cpu_after = process_cpu_seconds(server_pid)
        db_after = _cpu_by_pid(db_pids() if db_pids else ())
    if cpu_before is None or cpu_after is None:
        result.server_cpu_s = None
    else:
        result.server_cpu_s = cpu_after - cpu_before
    # A backend started during the window counts whole; one gone before its end is lost
    # (the pool keeps its connections, so neither happens much after the warm-up).
    result.db_cpu_s = sum(cpu - db_before.get(pid, 0.0) for pid, cpu in db_after.items())
    _raise_on_errors(result, f"measurement against {base_url}")
    return result


def _cpu_by_pid(pids: Iterable[int]) -> dict[int, float]:
    found = {pid: process_cpu_seconds(pid) for pid in pids}
    return {pid: cpu for pid, cpu in found.items() if cpu is not None}


def _raise_on_errors(result: LoadResult, what: str) -> None:
    if result.errors:
        samples = "\n  ".join(result.error_samples)
        raise BenchError(
            f"{what}: {result.errors} failed requests (statuses {dict(result.statuses)}); "
            f"a figure with errors is meaningless. First failures:\n  {samples}"
        )


def process_cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of a process (via psutil, a dev dependency; None without)."""
    if pid is None:
        return None
    try:
        import psutil
    except ImportError:
        return None
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return float(times.user + times.system)


def event_loop_runner() -> asyncio.Runner:
    """An asyncio runner on uvloop when available: the client shares a 2-core machine
    with the server, so the cheaper its loop, the less it skews the servers."""
    try:
        import uvloop
    except ImportError:
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


# --- server processes ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_environment(**extra: str) -> dict[str, str]:
    """The parent's environment minus every VIVIX_ variable (an operator's own settings
    must not leak into a benchmark), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("VIVIX_")}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    env.update(extra)
    return env


class ServerProcess:
    """A server under test, in its own process so it gets a core of its own and the same
    process model as production (one uvicorn process)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        port: int,
        log_path: Path,
        health_path: str = "/healthz",
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.port = port
        self.log_path = log_path
        self.health_path = health_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def wait_ready(self, within_s: float = 60.0) -> None:
        deadline = time.monotonic() + within_s
        async with httpx.AsyncClient(base_url=self.base_url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise BenchError(
                        f"{self.name} exited with {self.process.returncode} while starting:\n"
                        f"{self.log_tail()}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(self.health_path)).is_success:
                        return
                await asyncio.sleep(0.1)
        raise BenchError(f"{self.name} did not become ready in {within_s:.0f}s:\n{self.log_tail()}")

    def check_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            raise BenchError(f"{self.name} is not running:\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGINT first (uvicorn shuts down gracefully and runs the lifespan exit), then
        SIGKILL if it hangs."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text("utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


async def wait_listening(process: ServerProcess, within_s: float = 60.0) -> None:
    """Until the process answers HTTP at all on its health path (any status: a fake with no
    health route answers 404 once it listens)."""
    deadline = time.monotonic() + within_s
    async with httpx.AsyncClient(base_url=process.base_url, timeout=2.0) as client:
        while time.monotonic() < deadline:
            process.check_alive()
            with contextlib.suppress(httpx.HTTPError):
                await client.get(process.health_path)
                return
            await asyncio.sleep(0.1)
    raise BenchError(f"{process.name} did not listen in {within_s:.0f}s:\n{process.log_tail()}")


def uvicorn_settings() -> dict[str, Any]:
    """The uvicorn settings `vivix serve` uses, for the baseline to copy: uvicorn's own
    defaults (loop/http "auto" pick uvloop and httptools from uvicorn[standard]), one
    process, access log off."""
    return {"log_level": "warning", "access_log": False}


def machine_description() -> dict[str, Any]:
    import platform

    load1, load5, _ = os.getloadavg()
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_1m_at_start": round(load1, 2),
        "loadavg_5m_at_start": round(load5, 2),
    }


# --- databases and process trees (bench_engine, bench_drain) ------------------------------

DEFAULT_BENCH_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


class PostgresUnavailable(BenchError):
    """The benchmark's PostgreSQL server could not be reached (that database is skipped)."""


def bench_postgres_admin_url() -> str:
    """The server benchmarks create their databases on: VIVIX_BENCH_POSTGRES_URL, else the
    local default (plain `postgresql://`, as operators write it)."""
    return os.environ.get("VIVIX_BENCH_POSTGRES_URL", DEFAULT_BENCH_POSTGRES_URL)


@contextlib.asynccontextmanager
async def fresh_postgres_database(admin_url: str, prefix: str) -> AsyncIterator[str]:
    """A new, empty database on the server of `admin_url`, dropped (connections and all)
    on exit. Yields its URL in the same spelling as `admin_url`; creating the schema is
    the caller's business (e.g. `vivix migrate`)."""
    import uuid

    import asyncpg  # type: ignore[import-untyped]
    from sqlalchemy.engine import make_url

    url = make_url(admin_url)
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"

    async def admin(statement: str) -> None:
        connection = await asyncpg.connect(dsn, timeout=10)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    try:
        await asyncio.wait_for(admin(f'CREATE DATABASE "{name}"'), 15)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        shown = url.render_as_string(hide_password=True)
        raise PostgresUnavailable(f"PostgreSQL at {shown} unreachable: {exc!r}") from None
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def process_tree_rss(pid: int) -> int | None:
    """Resident memory of a process plus all its descendants, in bytes (None once gone)."""
    import psutil

    try:
        root = psutil.Process(pid)
        members = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    total = 0
    for member in members:
        with contextlib.suppress(psutil.Error):
            total += member.memory_info().rss
    return total


def processes_cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds of several processes (those that are gone count 0)."""
    return sum(process_cpu_seconds(pid) or 0.0 for pid in pids)


def postgres_backend_pids(database: str) -> list[int]:
    """The local PostgreSQL server's backends connected to `database` (their process title
    names it): the database's share of a benchmark's CPU, leaving out other users' work and
    the server's shared background processes."""
    import psutil

    pids = []
    for process in psutil.process_iter(["name", "cmdline"]):
        title = " ".join(process.info["cmdline"] or ())
        if process.info["name"] in ("postgres", "postmaster") and f" {database} " in title:
            pids.append(process.pid)
    return pids
