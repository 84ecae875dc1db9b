"""1,000 open event streams on one API process: memory per stream and fan-out latency.

    .venv/bin/python -m bench.bench_sse                         # SQLite and PostgreSQL
    .venv/bin/python -m bench.bench_sse --db postgres --streams 1000 --changes 15 --json

Vivix (API.md §5.2): `--streams` connections hold `GET /api/v1/events` (the account's
stream) open on ONE API process, all for one account, so every change reaches every
stream. SQLite (the embedded default): one `vivix serve`, its embedded worker commits the
changes in the same process. PostgreSQL: `vivix serve --no-worker` holds the streams and a
`vivix worker` process commits the changes, which reach the API process by NOTIFY.

Then `--changes` generations of `vivix-local-image` are submitted one at a time (the next
once the previous one's final state reached every stream). **Fan-out latency** of one
change, per stream = the moment the stream's client received its `completed` event −
the generation's `completed_at` as committed in the database (stamped by the worker in the
transaction that commits the final state and appends the change-feed row). Reported: p50
and p99 over all (change × stream) samples, and per change the time until the LAST stream
had it (p50 and max over the changes).

**Memory per stream** = (RSS of the API process with the streams open − its RSS before
they opened, after a warm-up of 10 streams opened and closed) / streams. RSS of the one
process, not its render children.

**Baseline (the floor)**: a bare sse-starlette app (`EventSourceResponse`, one asyncio
queue per stream; what Vivix's streams are built on) on the same uvicorn settings, holding
the same number of streams; `POST /emit` stamps `time.time()` into an event and puts it on
every queue: fan-out latency = received − stamped. Same client, same run.

The client is one asyncio process holding every connection with a raw `asyncio.Protocol`
(no SSE library): it records `time.time()` when the bytes completing an event arrive and
only scans for the fields it needs, so that its own CPU skews the figures little.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.bench_webhooks import database_for, migrated_with_account, run_per_database
from bench.common import (
    BenchError,
    ServerProcess,
    clean_environment,
    free_port,
    machine_description,
    percentile,
)

MODEL = "vivix-local-image"
GENERATION_ID = re.compile(rb'"generation_id":"([0-9a-f-]{36})"')
BASELINE_STAMP = re.compile(rb'"t":([0-9.]+),"n":([0-9]+)')


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the baseline server (its own process) ------------------------------------------------------


def serve_baseline(port: int) -> None:
    """`python -m bench.bench_sse --serve-baseline PORT`: GET /events holds a stream,
    POST /emit fans one stamped event out to all of them."""
    import uvicorn
    from sse_starlette import EventSourceResponse, ServerSentEvent
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    queues: set[asyncio.Queue[str]] = set()
    emitted = 0

    async def events(_request: Request) -> Response:
        queue: asyncio.Queue[str] = asyncio.Queue()

        async def stream() -> Any:
            queues.add(queue)
            try:
                while True:
                    data = await queue.get()
                    yield ServerSentEvent(data=data, event="tick", id=data[-8:])
            finally:
                queues.discard(queue)

        return EventSourceResponse(
            stream(),
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            ping=15,
        )

    async def emit(_request: Request) -> Response:
        nonlocal emitted
        emitted += 1
        data = json.dumps({"t": time.time(), "n": emitted}, separators=(",", ":"))
        for queue in queues:
            queue.put_nowait(data)
        return Response(status_code=204)

    async def healthz(_request: Request) -> Response:
        return Response(str(len(queues)))

    app = Starlette(
        routes=[
            Route("/events", events),
            Route("/emit", emit, methods=["POST"]),
            Route("/healthz", healthz),
        ]
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# -- the client ---------------------------------------------------------------------------------


class _Stream(asyncio.Protocol):
    """One held stream: the response's status, and each complete event handed to
    `on_event(bytes, arrival time)`."""

    def __init__(self, request: bytes, on_event: Callable[[bytes, float], None]) -> None:
        self.request = request
        self.on_event = on_event
        self.buffer = b""
        self.status: int | None = None
        self.opened: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.buffer += data
        if self.status is None:
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            self.status = int(head.split(b" ", 2)[1])
            self.buffer = rest
            if not self.opened.done():
                self.opened.set_result(self.status)
        # Events end with a blank line (sse-starlette separates lines with \r\n).
        *complete, self.buffer = self.buffer.split(b"\r\n\r\n")
        for event in complete:
            if b"data:" in event:
                self.on_event(event, now)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed before answering"))


class Streams:
    """`count` streams held open against `path` on 127.0.0.1:`port`."""

    def __init__(self, port: int, path: str, headers: dict[str, str]) -> None:
        lines = [f"GET {path} HTTP/1.1", f"host: 127.0.0.1:{port}", "accept: text/event-stream"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.request = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self.port = port
        self.streams: list[_Stream] = []
        self.received: dict[bytes, list[float]] = {}  # key → arrival time per stream
        self.key: Callable[[bytes], bytes | None] = lambda _event: None

    def _on_event(self, event: bytes, at: float) -> None:
        key = self.key(event)
        if key is not None:
            self.received.setdefault(key, []).append(at)

    async def open(self, count: int, batch: int = 50) -> None:
        loop = asyncio.get_running_loop()

        async def one() -> None:
            _, stream = await loop.create_connection(
                lambda: _Stream(self.request, self._on_event), "127.0.0.1", self.port
            )
            self.streams.append(stream)
            status = await asyncio.wait_for(stream.opened, 60)
            if status != 200:
                raise BenchError(f"a stream was answered {status}: {stream.buffer[:300]!r}")

        for start in range(0, count, batch):
            await asyncio.gather(*(one() for _ in range(min(batch, count - start))))

    def open_count(self) -> int:
        return sum(1 for stream in self.streams if not stream.closed)

    async def wait_all(self, key: bytes, within_s: float) -> list[float]:
        deadline = time.monotonic() + within_s
        while len(self.received.get(key, ())) < len(self.streams):
            if time.monotonic() > deadline:
                got = len(self.received.get(key, ()))
                raise BenchError(
                    f"{got} of {len(self.streams)} streams got {key!r} in {within_s:.0f} s "
                    f"({self.open_count()} still open)"
                )
            await asyncio.sleep(0.02)
        return self.received[key]

    def close(self) -> None:
        for stream in self.streams:
            if stream.transport is not None:
                stream.transport.close()
        self.streams = []


def rss(pid: int) -> int:
    import psutil

    return int(psutil.Process(pid).memory_info().rss)


# -- figures --------------------------------------------------------------------------------------


@dataclass
class Figures:
    server: str
    streams: int
    changes: int
    rss_before_mb: float
    rss_with_streams_mb: float
    kib_per_stream: float
    fanout_p50_ms: float
    fanout_p99_ms: float
    last_stream_p50_ms: float
    last_stream_max_ms: float


def figures(
    server: str, streams: int, before: int, after: int, per_change: list[list[float]]
) -> Figures:
    samples = sorted(x for change in per_change for x in change)
    last = sorted(max(change) for change in per_change)
    return Figures(
        server=server,
        streams=streams,
        changes=len(per_change),
        rss_before_mb=round(before / 2**20, 1),
        rss_with_streams_mb=round(after / 2**20, 1),
        kib_per_stream=round((after - before) / streams / 1024, 1),
        fanout_p50_ms=round(percentile(samples, 50), 1),
        fanout_p99_ms=round(percentile(samples, 99), 1),
        last_stream_p50_ms=round(percentile(last, 50), 1),
        last_stream_max_ms=round(max(last), 1),
    )


async def settle_rss(pid: int, seconds: float = 3.0) -> int:
    await asyncio.sleep(seconds)
    return rss(pid)


# -- the baseline run -----------------------------------------------------------------------------


async def run_baseline(args: argparse.Namespace, workdir: Path) -> Figures:
    port = free_port()
    server = ServerProcess(
        "sse-baseline",
        [sys.executable, "-m", "bench.bench_sse", "--serve-baseline", str(port)],
        env=clean_environment(),
        port=port,
        log_path=workdir / "baseline.log",
    )
    server.start()
    try:
        await server.wait_ready()
        assert server.pid is not None
        warm = Streams(port, "/events", {})
        await warm.open(10)
        warm.close()
        before = await settle_rss(server.pid)
        streams = Streams(port, "/events", {})
        stamps: dict[int, float] = {}  # event n → the time the server stamped into it

        def key(event: bytes) -> bytes | None:
            found = BASELINE_STAMP.search(event)
            if found is None:
                return None
            stamps[int(found.group(2))] = float(found.group(1))
            return found.group(2)

        streams.key = key
        await streams.open(args.streams)
        after = await settle_rss(server.pid)
        per_change = []
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
            for n in range(1, args.changes + 1):
                await http.post("/emit")
                times = await streams.wait_all(str(n).encode(), 60)
                per_change.append([(t - stamps[n]) * 1000 for t in times])
                await asyncio.sleep(args.pause)
        streams.close()
        server.check_alive()
        return figures("bare sse-starlette", args.streams, before, after, per_change)
    finally:
        server.stop()


# -- the Vivix run --------------------------------------------------------------------------------


async def completed_at(database_url: str, generation_id: str) -> float:
    from sqlalchemy import select
    from sqlalchemy.engine import make_url

    from vivix.kit.db import Database
    from vivix.models import Generation

    url = database_url
    if url.startswith("postgresql://"):
        url = make_url(url).set(drivername="postgresql+asyncpg").render_as_string(False)
    db = Database(url, pool_size=1, max_overflow=0)
    try:
        async with db.read() as session:
            done = await session.scalar(
                select(Generation.completed_at).where(Generation.id == generation_id)
            )
    finally:
        await db.dispose()
    if done is None:
        raise BenchError(f"{generation_id} has no completed_at")
    return done.timestamp()


async def run_vivix(kind: str, args: argparse.Namespace, workdir: Path) -> Figures:
    async with database_for(kind, workdir) as database_url:
        env = clean_environment(
            VIVIX_DATABASE_URL=database_url,
            VIVIX_DATA_DIR=str(workdir / "data"),
            VIVIX_SECRET_KEY="sse-bench-secret",
            VIVIX_LOG_LEVEL="warning",
            VIVIX_WORKER__RENDER_PROCESSES="1",
        )
        key = migrated_with_account(env, "streams")
        port = free_port()
        serve = [sys.executable, "-m", "vivix", "serve", "--port", str(port), "--json"]
        processes = []
        if kind == "postgres":
            serve.append("--no-worker")
            processes.append(
                ServerProcess(
                    "worker",
                    [sys.executable, "-m", "vivix", "worker", "--json"],
                    env=env,
                    port=0,
                    log_path=workdir / "worker.log",
                )
            )
        api = ServerProcess(
            "api",
            serve,
            env={**env, "VIVIX_PUBLIC_URL": f"http://127.0.0.1:{port}"},
            port=port,
            log_path=workdir / "api.log",
            health_path="/readyz",
        )
        processes.insert(0, api)
        headers = {"authorization": f"Bearer {key}"}
        try:
            for process in processes:
                process.start()
            await api.wait_ready(120)
            assert api.pid is not None
            warm = Streams(port, "/api/v1/events", headers)
            await warm.open(10)
            warm.close()
            before = await settle_rss(api.pid)
            streams = Streams(port, "/api/v1/events", headers)

            def key_of(event: bytes) -> bytes | None:
                if b'"status":"completed"' not in event:
                    return None
                found = GENERATION_ID.search(event)
                return None if found is None else found.group(1)

            streams.key = key_of
            await streams.open(args.streams)
            after = await settle_rss(api.pid)
            log(f"{kind}: {streams.open_count()} streams open; {args.changes} changes")
            per_change = []
            async with httpx.AsyncClient(base_url=api.base_url, timeout=60) as http:
                for index in range(args.changes):
                    submitted = await http.post(
                        "/api/v1/generate",
                        json={"model": MODEL, "prompt": f"sse bench {index}", "seed": index},
                        headers={"Authorization": f"Bearer {key}"},
                    )
                    if submitted.status_code not in (200, 201):
                        raise BenchError(f"submit: {submitted.status_code} {submitted.text}")
                    generation_id = submitted.json()["generation_id"]
                    times = await streams.wait_all(generation_id.encode(), 120)
                    done = await completed_at(database_url, generation_id)
                    per_change.append([(t - done) * 1000 for t in times])
                    await asyncio.sleep(args.pause)
            streams.close()
            for process in processes:
                process.check_alive()
        finally:
            for process in reversed(processes):
                process.stop(20)
    return figures(f"vivix ({kind})", args.streams, before, after, per_change)


def table(results: list[Figures]) -> str:
    lines = [
        "| server | streams | RSS before → with streams | per stream | fan-out p50 / p99 "
        "| last stream p50 / max |",
        "|---|---|---|---|---|---|",
    ]
    for f in results:
        lines.append(
            f"| {f.server} | {f.streams} | {f.rss_before_mb:.0f} → {f.rss_with_streams_mb:.0f} "
            f"MiB | {f.kib_per_stream:.1f} KiB | {f.fanout_p50_ms:.1f} / {f.fanout_p99_ms:.1f} ms "
            f"| {f.last_stream_p50_ms:.1f} / {f.last_stream_max_ms:.1f} ms |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--changes", type=int, default=15)
    parser.add_argument("--pause", type=float, default=0.5, help="seconds between changes")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--serve-baseline", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_baseline is not None:
        serve_baseline(args.serve_baseline)
        return 0
    import tempfile

    machine = machine_description()
    kinds = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    results: list[Figures] = []
    with tempfile.TemporaryDirectory(prefix="vivix-sse-") as tmp:
        root = args.workdir or Path(tmp)
        (root / "baseline").mkdir(parents=True, exist_ok=True)
        results.append(asyncio.run(run_baseline(args, root / "baseline")))
        log(table(results))
        notes = run_per_database(
            kinds, root, lambda kind, workdir: asyncio.run(run_vivix(kind, args, workdir)),
            results, table,
        )  # fmt: skip
    if args.json:
        print(json.dumps({"machine": machine, "results": [asdict(f) for f in results]}, indent=2))
    else:
        print(table(results))
        print(
            f"\n{machine['cpus']} CPUs, load {machine['loadavg_1m_at_start']} at start; "
            f"{args.streams} streams, {args.changes} changes"
        )
        for note in notes:
            print(note)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main(sys.argv[1:]))
