"""Completion → webhook received: how long after a generation's final state commits its
webhook reaches the receiver, on real processes.

    .venv/bin/python -m bench.bench_webhooks                      # SQLite and PostgreSQL
    .venv/bin/python -m bench.bench_webhooks --db postgres --count 400 --rate 8 --json

Per database a real deployment runs on this machine:

- SQLite (the embedded default): one `vivix serve` with its embedded worker.
- PostgreSQL: `vivix serve --no-worker` (the API) and one `vivix worker` process (sender
  included), a fresh database per run (`vivix migrate`d, dropped at the end).

A receiver (uvicorn, a process of its own, a raw ASGI app answering 204) timestamps every
request with `time.time()` once its body has arrived. An account registers it as a webhook
endpoint (`VIVIX_WEBHOOKS__ALLOW_INSECURE_TARGETS=true`: plain http to 127.0.0.1), then
submits `--count` generations of `vivix-local-image` (1K), open loop at `--rate` per
second, so deliveries are measured under a steady trickle, not one at a time.

**Latency of one delivery** = receiver's arrival time − the generation's `completed_at`,
as committed in the database: the `utcnow()` the worker stamps on the row in the
settlement transaction, the same transaction that inserts the delivery (outbox) row and
sends the NOTIFY; the commit follows within that transaction's remaining statements. Same
machine, same wall clock (PostgreSQL runs here too). Split into:

- wake + claim: `completed_at` → the attempt's start (`webhook_attempts.at` −
  `latency_ms`: `at` is stamped when the attempt's answer is in, `latency_ms` is the
  attempt's duration from its start);
- send: attempt start → arrival at the receiver (signing, the egress check, connecting,
  the request).

**Baseline (the floor of one delivery)**, same receiver, same run: a bare `httpx` POST of
a delivery-sized body from this process, (a) on a fresh connection each time
(`Connection: close`, as the sender does: one connection per attempt) and (b) on one
keep-alive connection; latency = arrival − `time.time()` just before the call.

Targets (issue 10, PostgreSQL): p50 ≤ 50 ms, p99 ≤ 250 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from bench.common import (
    REPO_ROOT,
    BenchError,
    PostgresUnavailable,
    ServerProcess,
    bench_postgres_admin_url,
    clean_environment,
    free_port,
    fresh_postgres_database,
    machine_description,
    percentile,
    wait_listening,
)

TARGET_P50_MS = 50.0
TARGET_P99_MS = 250.0
MODEL = "vivix-local-image"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the receiver (its own process) -------------------------------------------------------------


def serve_receiver(port: int) -> None:
    """`python -m bench.bench_webhooks --serve-receiver PORT`: POST anything → 204, with its
    arrival time kept; `GET /arrivals` returns them all."""
    import uvicorn

    arrivals: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        arrived = time.time()
        if scope["method"] == "POST":
            headers = dict(scope["headers"])
            arrivals.append(
                {
                    "at": arrived,
                    "delivery_id": headers.get(b"x-vivix-delivery-id", b"").decode(),
                    "probe": headers.get(b"x-bench-probe", b"").decode(),
                    "body": body.decode("utf-8", "replace"),
                }
            )
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        payload = json.dumps(arrivals).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


async def arrivals(receiver: ServerProcess) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=receiver.base_url, timeout=30) as http:
        response = await http.get("/arrivals")
        response.raise_for_status()
        found: list[dict[str, Any]] = response.json()
        return found


# -- the baseline ---------------------------------------------------------------------------------


async def baseline(receiver: ServerProcess, body: bytes, count: int) -> dict[str, list[float]]:
    """Latencies (ms) of bare httpx POSTs: a fresh connection each, then keep-alive."""
    url = f"{receiver.base_url}/hook"
    sent: dict[str, float] = {}
    for kind in ("fresh", "keepalive"):
        async with httpx.AsyncClient(timeout=10) as http:
            for index in range(count):
                probe = f"{kind}-{index}"
                headers = {"content-type": "application/json", "x-bench-probe": probe}
                if kind == "fresh":
                    headers["connection"] = "close"
                sent[probe] = time.time()
                response = await http.post(url, content=body, headers=headers)
                if response.status_code != 204:
                    raise BenchError(f"receiver answered {response.status_code}")
                await asyncio.sleep(0.02)
    out: dict[str, list[float]] = {"fresh": [], "keepalive": []}
    for arrival in await arrivals(receiver):
        probe = arrival["probe"]
        if probe in sent:
            out[probe.split("-")[0]].append((arrival["at"] - sent[probe]) * 1000)
    return out


# -- one deployment -------------------------------------------------------------------------------


@dataclass
class Figures:
    database: str
    deliveries: int
    total_p50_ms: float
    total_p99_ms: float
    total_max_ms: float
    claim_p50_ms: float
    claim_p99_ms: float
    send_p50_ms: float
    send_p99_ms: float
    baseline_fresh_p50_ms: float
    baseline_fresh_p99_ms: float
    baseline_keepalive_p50_ms: float
    baseline_keepalive_p99_ms: float
    attempts_per_delivery: float
    retried: int

    @property
    def meets_target(self) -> bool:
        return self.total_p50_ms <= TARGET_P50_MS and self.total_p99_ms <= TARGET_P99_MS


def vivix_cli(env: dict[str, str], *args: str) -> Any:
    done = subprocess.run(
        [sys.executable, "-m", "vivix", *args, "--json"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise BenchError(f"vivix {' '.join(args)} failed: {done.stdout}\n{done.stderr}")
    return json.loads(done.stdout) if done.stdout.strip() else None


FiguresT = TypeVar("FiguresT")


def run_per_database(
    kinds: Sequence[str],
    root: Path,
    run: Callable[[str, Path], FiguresT],
    results: list[FiguresT],
    table: Callable[[list[FiguresT]], str],
) -> list[str]:
    """`run(kind, workdir)` for each database into `results`, the table logged after each;
    an unreachable PostgreSQL is a note (returned), not a failure."""
    notes: list[str] = []
    for kind in kinds:
        workdir = root / kind
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            results.append(run(kind, workdir))
        except PostgresUnavailable as exc:
            notes.append(f"postgres skipped: {exc}")
            log(notes[-1])
            continue
        log(table(results))
    return notes


def migrated_with_account(env: dict[str, str], account: str) -> str:
    """Migrates the database `env` names and creates `account` with credits and limits no
    benchmark reaches; returns a live API key of it."""
    vivix_cli(env, "migrate")
    vivix_cli(env, "accounts", "create", account, "--credits", "100000000")
    vivix_cli(
        env, "accounts", "update", account,
        "--calls-per-minute", "1000000", "--concurrent-jobs", "10000",
    )  # fmt: skip
    key: str = vivix_cli(env, "keys", "create", account, "--name", "bench")["key"]
    return key


@contextlib.asynccontextmanager
async def database_for(kind: str, workdir: Path) -> AsyncIterator[str]:
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{(workdir / 'data' / 'vivix.db').resolve()}"
        return
    async with fresh_postgres_database(bench_postgres_admin_url(), "vivix_hooks") as url:
        yield url


async def submit(api: str, key: str, count: int, rate: float) -> list[str]:
    """`count` submits, open loop at `rate`/s (one task each, so a slow answer does not
    delay the next submit)."""
    headers = {"Authorization": f"Bearer {key}"}
    ids: list[str] = []

    async def one(http: httpx.AsyncClient, index: int) -> None:
        body = {"model": MODEL, "prompt": f"webhook bench {index}", "seed": index}
        response = await http.post("/api/v1/generate", json=body, headers=headers)
        if response.status_code not in (200, 201):
            raise BenchError(f"submit refused: {response.status_code} {response.text}")
        ids.append(response.json()["generation_id"])

    async with httpx.AsyncClient(base_url=api, timeout=60) as http:
        tasks = []
        started = time.monotonic()
        for index in range(count):
            delay = started + index / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(http, index)))
        await asyncio.gather(*tasks)
    return ids


async def breakdown(database_url: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Per generation: completed_at, and its delivery's attempts (at, latency_ms)."""
    from sqlalchemy import select
    from sqlalchemy.engine import make_url

    from vivix.kit.db import Database
    from vivix.models import Generation, WebhookAttempt, WebhookDelivery

    url = database_url
    if url.startswith("postgresql://"):
        url = make_url(url).set(drivername="postgresql+asyncpg").render_as_string(False)
    db = Database(url, pool_size=2, max_overflow=0)
    try:
        async with db.read() as session:
            rows = await session.execute(
                select(Generation.id, Generation.completed_at, Generation.status).where(
                    Generation.id.in_(ids)
                )
            )
            out: dict[str, dict[str, Any]] = {
                gid: {"completed_at": done.timestamp() if done else None, "status": status}
                for gid, done, status in rows
            }
            deliveries = await session.execute(
                select(WebhookDelivery.id, WebhookDelivery.generation_id, WebhookDelivery.attempts)
            )
            by_delivery: dict[str, str] = {}
            for delivery_id, generation_id, attempts in deliveries:
                if generation_id in out:
                    by_delivery[delivery_id] = generation_id
                    out[generation_id].update(delivery_id=delivery_id, attempts=attempts)
            attempts_rows = await session.execute(
                select(
                    WebhookAttempt.delivery_id, WebhookAttempt.at, WebhookAttempt.latency_ms
                ).order_by(WebhookAttempt.id)
            )
            for delivery_id, at, latency_ms in attempts_rows:
                generation_id = by_delivery.get(delivery_id)
                if generation_id is not None and "attempt_start" not in out[generation_id]:
                    out[generation_id]["attempt_start"] = at.timestamp() - (latency_ms or 0) / 1000
    finally:
        await db.dispose()
    return out


async def run_one(kind: str, args: argparse.Namespace, workdir: Path) -> Figures:
    receiver_port = free_port()
    receiver = ServerProcess(
        "receiver",
        [sys.executable, "-m", "bench.bench_webhooks", "--serve-receiver", str(receiver_port)],
        env=clean_environment(),
        port=receiver_port,
        log_path=workdir / "receiver.log",
        health_path="/arrivals",
    )
    async with database_for(kind, workdir) as database_url:
        env = clean_environment(
            VIVIX_DATABASE_URL=database_url,
            VIVIX_DATA_DIR=str(workdir / "data"),
            VIVIX_SECRET_KEY="webhook-bench-secret",
            VIVIX_LOG_LEVEL="warning",
            VIVIX_WEBHOOKS__ALLOW_INSECURE_TARGETS="true",
            VIVIX_WORKER__RENDER_PROCESSES="1",
        )
        key = migrated_with_account(env, "hooks")
        api_port = free_port()
        serve = [sys.executable, "-m", "vivix", "serve", "--port", str(api_port), "--json"]
        processes = [receiver]
        if kind == "postgres":
            serve.append("--no-worker")
            worker = ServerProcess(
                "worker",
                [sys.executable, "-m", "vivix", "worker", "--json"],
                env=env,
                port=0,
                log_path=workdir / "worker.log",
            )
            processes.append(worker)
        api = ServerProcess(
            "api",
            serve,
            env={**env, "VIVIX_PUBLIC_URL": f"http://127.0.0.1:{api_port}"},
            port=api_port,
            log_path=workdir / "api.log",
            health_path="/readyz",
        )
        processes.append(api)
        try:
            for process in processes:
                process.start()
            await wait_listening(receiver)
            await api.wait_ready(120)
            async with httpx.AsyncClient(base_url=api.base_url, timeout=30) as http:
                created = await http.post(
                    "/api/v1/webhooks",
                    json={"url": f"{receiver.base_url}/hook"},
                    headers={"Authorization": f"Bearer {key}"},
                )
                if created.status_code != 201:
                    raise BenchError(f"webhook not created: {created.status_code} {created.text}")
            # Warm-up: imports, connections, the render pool; not measured.
            warm = await submit(api.base_url, key, args.warmup, args.rate)
            await wait_for_deliveries(receiver, processes, set(warm), args)
            log(f"{kind}: warm; {args.count} generations at {args.rate:g}/s")
            ids = await submit(api.base_url, key, args.count, args.rate)
            got = await wait_for_deliveries(receiver, processes, set(ids), args)
            sample = next(iter(got.values()))["body"].encode()
            floor = await baseline(receiver, sample, args.baseline_count)
        finally:
            for process in reversed(processes):
                process.stop(20)
        rows = await breakdown(database_url, ids)
    for generation_id, row in rows.items():
        row["arrived_at"] = got[generation_id]["at"]
    (workdir / "deliveries.json").write_text(json.dumps(rows, indent=1))
    total, claim, send = [], [], []
    attempts = []
    for generation_id, row in rows.items():
        arrival = row["arrived_at"]
        if row["status"] != "completed" or row["completed_at"] is None:
            raise BenchError(f"{generation_id} ended {row['status']}")
        total.append((arrival - row["completed_at"]) * 1000)
        attempts.append(row.get("attempts", 0))
        if "attempt_start" in row:
            claim.append((row["attempt_start"] - row["completed_at"]) * 1000)
            send.append((arrival - row["attempt_start"]) * 1000)
    total.sort(), claim.sort(), send.sort()
    fresh, keepalive = sorted(floor["fresh"]), sorted(floor["keepalive"])

    def r(values: list[float], q: float) -> float:
        return round(percentile(values, q), 1)

    return Figures(
        database=kind,
        deliveries=len(total),
        total_p50_ms=r(total, 50),
        total_p99_ms=r(total, 99),
        total_max_ms=round(max(total), 1),
        claim_p50_ms=r(claim, 50),
        claim_p99_ms=r(claim, 99),
        send_p50_ms=r(send, 50),
        send_p99_ms=r(send, 99),
        baseline_fresh_p50_ms=r(fresh, 50),
        baseline_fresh_p99_ms=r(fresh, 99),
        baseline_keepalive_p50_ms=r(keepalive, 50),
        baseline_keepalive_p99_ms=r(keepalive, 99),
        attempts_per_delivery=round(sum(attempts) / len(attempts), 3),
        retried=sum(1 for a in attempts if a > 1),
    )


async def wait_for_deliveries(
    receiver: ServerProcess,
    processes: list[ServerProcess],
    ids: set[str],
    args: argparse.Namespace,
) -> dict[str, dict[str, Any]]:
    """Generation id → its first arrival, once every one of `ids` has arrived."""
    deadline = time.monotonic() + args.timeout
    while True:
        first: dict[str, dict[str, Any]] = {}
        for arrival in await arrivals(receiver):
            if not arrival["delivery_id"]:
                continue
            generation_id = json.loads(arrival["body"]).get("generation_id")
            if generation_id in ids and generation_id not in first:
                first[generation_id] = arrival
        if len(first) == len(ids):
            return first
        for process in processes:
            process.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(f"{len(ids) - len(first)} of {len(ids)} deliveries never arrived")
        await asyncio.sleep(0.5)


def table(results: list[Figures]) -> str:
    lines = [
        "| database | deliveries | completion → received p50 / p99 (max) | "
        "wake + claim p50 / p99 | send p50 / p99 | bare httpx POST, fresh conn p50 / p99 | "
        "keep-alive p50 / p99 | p50 × floor | target |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for f in results:
        ratio = f.total_p50_ms / f.baseline_fresh_p50_ms if f.baseline_fresh_p50_ms else 0
        target = "—" if f.database != "postgres" else ("met" if f.meets_target else "MISSED")
        lines.append(
            f"| {f.database} | {f.deliveries} | {f.total_p50_ms:.1f} / {f.total_p99_ms:.1f} ms "
            f"({f.total_max_ms:.0f}) | {f.claim_p50_ms:.1f} / {f.claim_p99_ms:.1f} ms | "
            f"{f.send_p50_ms:.1f} / {f.send_p99_ms:.1f} ms | "
            f"{f.baseline_fresh_p50_ms:.1f} / {f.baseline_fresh_p99_ms:.1f} ms | "
            f"{f.baseline_keepalive_p50_ms:.1f} / {f.baseline_keepalive_p99_ms:.1f} ms | "
            f"{ratio:.1f} | {target} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--count", type=int, default=300, help="measured generations")
    parser.add_argument("--rate", type=float, default=5.0, help="submits per second")
    parser.add_argument("--warmup", type=int, default=10, help="unmeasured generations first")
    parser.add_argument("--baseline-count", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=300.0, help="for all deliveries")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--serve-receiver", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_receiver is not None:
        serve_receiver(args.serve_receiver)
        return 0
    import tempfile

    machine = machine_description()
    kinds = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    results: list[Figures] = []
    with tempfile.TemporaryDirectory(prefix="vivix-hooks-") as tmp:
        root = args.workdir or Path(tmp)
        notes = run_per_database(
            kinds, root, lambda kind, workdir: asyncio.run(run_one(kind, args, workdir)),
            results, table,
        )  # fmt: skip
    if args.json:
        print(
            json.dumps(
                {"machine": machine, "results": [asdict(f) for f in results], "notes": notes},
                indent=2,
            )
        )
    else:
        print(table(results))
        print(
            f"\n{machine['cpus']} CPUs, load {machine['loadavg_1m_at_start']} at start; "
            f"{args.count} generations at {args.rate:g}/s per database"
        )
        for note in notes:
            print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
