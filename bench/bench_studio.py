"""Time to first byte of the Studio's Generate and History pages with 10,000 generations
in the signed-in account, on the embedded default database (SQLite in VIVIX_DATA_DIR).

The account, its user and the 10,000 generations are written before the server starts:
the account and user through the operator service (what `vivix accounts create` and
`vivix users create` call), the generations by one bulk INSERT into the real
`generations` table (finished ones mostly, with outputs, spread over 35 days, API and
Studio, every local model; two still running). Then one `vivix serve --no-worker`
process serves a browser session signed in through the real sign-in form.

One client asks for each page in turn on one keep-alive connection (a person browsing),
so every page sees the same machine noise. The baseline is the same server stack serving
a trivial page, measured in the same rounds: the anonymous sign-in page (the Studio's
route class, security headers, a Jinja template, no database). `/healthz` (FastAPI and
the middlewares, JSON, no template) is the floor under that.

Run: python -m bench.bench_studio [--generations 10000] [--requests 300] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httptools
import httpx

from bench.common import (
    BenchError,
    ServerProcess,
    clean_environment,
    event_loop_runner,
    free_port,
    machine_description,
    percentile,
)

SECRET_KEY = "bench-studio-secret"
ACCOUNT = "bench-studio"
EMAIL = "bench@example.com"
PASSWORD = "correct horse battery staple"
TARGET_P50_MS = 50.0
MODELS = (
    ("vivix-local-image", "image/png", {"aspect_ratio": "1:1", "resolution": "1K"}),
    ("vivix-local-image", "image/png", {"aspect_ratio": "16:9", "resolution": "2K"}),
    ("vivix-local-audio", "audio/wav", {"duration": 10}),
    ("vivix-local-video", "video/mp4", {"duration": 5, "resolution": "720p"}),
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def uuid7_at(when: datetime, counter: int) -> str:
    """A UUIDv7 for `when` (ids order generations by time, as Vivix's do)."""
    ms = int(when.timestamp() * 1000)
    value = ms << 80 | (counter & 0xFFF) << 64 | int.from_bytes(os.urandom(8)) >> 2
    value = (value & ~(0xF << 76)) | (0x7 << 76)
    value = (value & ~(0x3 << 62)) | (0x2 << 62)
    return str(uuid.UUID(int=value))


def generation_rows(account_id: str, user_id: str, count: int) -> list[dict[str, Any]]:
    """`count` generations, newest first in time order of their ids; 85 % completed, 8 %
    failed, 5 % canceled, the rest pending or processing (at most two, the newest)."""
    now = datetime.now(UTC)
    rows = []
    for index in range(count):
        created = now - timedelta(seconds=300 * (count - index))
        slug, content_type, params = MODELS[index % len(MODELS)]
        gen_id = uuid7_at(created, index)
        studio = index % 2 == 0
        running = index >= count - 2
        roll = index % 100
        status = (
            ("processing" if index == count - 1 else "pending")
            if running
            else "failed"
            if roll < 8
            else "canceled"
            if roll < 13
            else "completed"
        )
        finished = None if running else created + timedelta(seconds=4)
        kind = content_type.split("/", 1)[0]
        rows.append(
            {
                "id": gen_id,
                "account_id": account_id,
                "api_key_id": None,
                "user_id": user_id if studio else None,
                "source": "studio" if studio else "api",
                "model": slug,
                "status": status,
                "is_test": False,
                "params": {"prompt": f"bench scene {index}: a harbour at dusk", **params},
                "metadata_": {},
                "credits_estimate": 2,
                "credits_used": None if running else (2 if status == "completed" else 0),
                "error_code": "PROVIDER_ERROR" if status == "failed" else None,
                "error_message": "The provider failed." if status == "failed" else None,
                "created_at": created,
                "started_at": None if status == "pending" else created + timedelta(seconds=1),
                "completed_at": finished,
                "attempts": 0 if status == "pending" else 1,
                "run_after": created,
                "progress": 0.4 if status == "processing" else None,
                "outputs": (
                    [
                        {
                            "key": f"outputs/{gen_id}/0.{content_type.split('/')[1]}",
                            "content_type": content_type,
                            "bytes": 123_456,
                            "width": 1024 if kind != "audio" else None,
                            "height": 1024 if kind != "audio" else None,
                            "duration_s": params.get("duration"),
                        }
                    ]
                    if status == "completed"
                    else None
                ),
            }
        )
    return rows


async def seed(data_dir: Path, count: int) -> None:
    """The account, its user, `count` generations; before the server starts."""
    from sqlalchemy import insert

    from vivix.admin import service as admin
    from vivix.migrations import upgrade_to_head
    from vivix.models import Generation
    from vivix.runtime import build_runtime, close_runtime
    from vivix.settings import load_settings

    settings = load_settings(data_dir=data_dir, secret_key=SECRET_KEY, redis_url=None)
    await upgrade_to_head(settings.resolved_database_url)
    runtime = await build_runtime(settings)
    try:
        account = await admin.create_account(runtime, ACCOUNT, "pro", 1_000_000)
        models = sorted({slug for slug, _, _ in MODELS})
        await admin.set_models(runtime, ACCOUNT, models, allow=True)
        user = await admin.create_user(runtime, EMAIL, account=ACCOUNT, password=PASSWORD)
        rows = generation_rows(account["id"], user["user_id"], count)
        started = time.perf_counter()
        async with runtime.db.transaction() as session:
            for chunk in range(0, len(rows), 1000):
                await session.execute(insert(Generation), rows[chunk : chunk + 1000])
        log(f"seeded {count} generations in {time.perf_counter() - started:.1f} s")
    finally:
        await close_runtime(runtime)


async def signed_in_cookie(base_url: str) -> str:
    """Sign in through the form, as a browser does; the Cookie header of the session."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30.0) as http:
        page = await http.get("/signin")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        if token is None:
            raise BenchError("the sign-in page has no form token")
        answer = await http.post(
            "/signin", data={"email": EMAIL, "password": PASSWORD, "csrf_token": token.group(1)}
        )
        if answer.status_code != 303 or "vivix_session" not in http.cookies:
            raise BenchError(f"sign-in failed: {answer.status_code} {answer.text[:300]}")
        return f"vivix_session={http.cookies['vivix_session']}"


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection that notes when the answer's first byte came."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[None] | None = None
        self.first_byte = 0.0
        self.size = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.first_byte:
            self.first_byte = time.perf_counter()
        self.size += len(data)
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(exc or ConnectionError("closed by the server"))

    async def get(self, request: bytes) -> tuple[int, float, float, int]:
        """Status, TTFB and total time in ms, bytes."""
        assert self.transport is not None
        self.first_byte, self.size = 0.0, 0
        self.done = asyncio.get_running_loop().create_future()
        sent = time.perf_counter()
        self.transport.write(request)
        await self.done
        total = time.perf_counter() - sent
        status = self.parser.get_status_code()
        return status, (self.first_byte - sent) * 1000, total * 1000, self.size


@dataclass
class Page:
    name: str
    path: str
    signed_in: bool = True
    ttfb_ms: list[float] = field(default_factory=list)
    total_ms: list[float] = field(default_factory=list)
    size: int = 0

    def summary(self) -> dict[str, Any]:
        ttfb, total = sorted(self.ttfb_ms), sorted(self.total_ms)
        return {
            "path": self.path,
            "requests": len(ttfb),
            "ttfb_p50_ms": round(percentile(ttfb, 50), 2),
            "ttfb_p99_ms": round(percentile(ttfb, 99), 2),
            "total_p50_ms": round(percentile(total, 50), 2),
            "bytes": self.size,
        }


def pages(history_cursor: str) -> list[Page]:
    month_ago = (datetime.now(UTC) - timedelta(days=30)).strftime("%Y-%m-%d")
    return [
        Page("baseline: trivial page", "/signin", signed_in=False),
        Page("floor: /healthz", "/healthz", signed_in=False),
        Page("Generate", "/generate"),
        Page("History", "/history"),
        Page("History, page 2", f"/history?cursor={history_cursor}"),
        Page("History, status=failed", "/history?status=failed"),
        # Worst cases: no row matches (every one of the 10,000 is read), and a date
        # filter whose rows are the oldest (the newer ones are read and skipped).
        Page("History, no match", "/history?model=vivix-local-audio&source=api"),
        Page("History, to=30 days ago", f"/history?to={month_ago}"),
    ]


async def measure(base_url: str, cookie: str, rounds: int, warmup: int) -> list[Page]:
    host = httpx.URL(base_url)
    async with httpx.AsyncClient(base_url=base_url, headers={"cookie": cookie}) as http:
        first = await http.get("/history")
        cursor = re.search(r'href="/history\?cursor=([^"&]+)"', first.text)
        if cursor is None:
            raise BenchError("History shows no next page")
    measured = pages(cursor.group(1))
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(_Connection, host.host, host.port or 80)
    requests = {}
    for page in measured:
        lines = [
            f"GET {page.path} HTTP/1.1",
            f"host: {host.host}:{host.port}",
            "accept: text/html",
            "user-agent: bench-studio",
        ]
        if page.signed_in:
            lines.append(f"cookie: {cookie}")
        requests[page.name] = ("\r\n".join(lines) + "\r\n\r\n").encode()
    try:
        for round_index in range(warmup + rounds):
            for page in measured:
                status, ttfb, total, size = await conn.get(requests[page.name])
                if status != 200:
                    raise BenchError(f"{page.path} answered {status}")
                if round_index >= warmup:
                    page.ttfb_ms.append(ttfb)
                    page.total_ms.append(total)
                    page.size = size
    finally:
        if conn.transport is not None:
            conn.transport.close()
    return measured


async def run(opts: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="vivix-bench-studio-") as tmp:
        workdir = Path(tmp)
        data_dir = workdir / "vivix-data"
        await seed(data_dir, opts.generations)
        port = free_port()
        server = ServerProcess(
            "vivix",
            [sys.executable, "-m", "vivix", "serve", "--no-worker", "--port", str(port)],
            env=clean_environment(
                VIVIX_DATA_DIR=str(data_dir),
                VIVIX_SECRET_KEY=SECRET_KEY,
                VIVIX_LOG_LEVEL="warning",
            ),
            port=port,
            log_path=workdir / "vivix.log",
        )
        server.start()
        try:
            await server.wait_ready()
            cookie = await signed_in_cookie(server.base_url)
            measured = await measure(server.base_url, cookie, opts.requests, opts.warmup)
            server.check_alive()
        finally:
            server.stop()
    baseline = percentile(sorted(measured[0].ttfb_ms), 50)
    results = []
    for page in measured:
        summary = page.summary()
        summary["name"] = page.name
        summary["p50_vs_baseline"] = round(summary["ttfb_p50_ms"] / baseline, 2)
        results.append(summary)
    return {
        "generations": opts.generations,
        "database": "sqlite (embedded default)",
        "target_p50_ms": TARGET_P50_MS,
        "machine": machine_description(),
        "pages": results,
    }


def render(report: dict[str, Any]) -> str:
    lines = [
        f"Studio TTFB, {report['generations']:,} generations in the account, "
        f"{report['database']}, one keep-alive client",
        "",
        f"{'page':<28} {'p50 ms':>8} {'p99 ms':>8} {'× base':>7} {'KiB':>6}  target",
    ]
    for page in report["pages"]:
        target = ""
        if not page["name"].startswith(("baseline", "floor")):
            met = page["ttfb_p50_ms"] <= report["target_p50_ms"]
            target = f"p50 ≤ {report['target_p50_ms']:.0f} ms: {'met' if met else 'MISSED'}"
        lines.append(
            f"{page['name']:<28} {page['ttfb_p50_ms']:>8.1f} {page['ttfb_p99_ms']:>8.1f} "
            f"{page['p50_vs_baseline']:>7.2f} {page['bytes'] / 1024:>6.1f}  {target}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generations", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=300, help="measured per page")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured rounds first")
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args(argv)
    with event_loop_runner() as runner:
        report = runner.run(run(opts))
    print(json.dumps(report, indent=2) if opts.json else render(report))
    missed = [
        p
        for p in report["pages"]
        if p["name"] in ("Generate", "History") and p["ttfb_p50_ms"] > TARGET_P50_MS
    ]
    return 2 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
