"""The chaos run's upstream: the Runware fake (tests/fakes/runware.py, Runware's public
protocol) in a process of its own, its tasks rendering for a few seconds of wall clock.

    python -m tests.chaos.provider --port 8123 --seconds 2 --api-key rw-chaos-key

Besides the protocol it answers `GET /_chaos/stats` for the harness: the accepted
inference tasks, in total and per prompt (each chaos submit has a prompt of its own, so a
prompt seen twice is an upstream job paid twice)."""

from __future__ import annotations

import argparse

import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.runware import FakeRunware


def build(seconds: float, api_key: str) -> FakeRunware:
    fake = FakeRunware(api_key)
    fake.seconds_before_done = seconds

    async def stats(request: Request) -> Response:
        return JSONResponse(
            {"submissions": fake.submissions, "by_prompt": dict(fake.submissions_by_prompt)}
        )

    fake.app.router.routes.insert(0, Route("/_chaos/stats", stats, methods=["GET"]))
    return fake


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--api-key", default="rw-chaos-key")
    args = parser.parse_args()
    fake = build(args.seconds, args.api_key)
    uvicorn.run(fake.app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
