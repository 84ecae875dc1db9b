"""/healthz (the process answers), /readyz (it can serve), /metrics (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from vivix.kit.http import json_response, runtime_of
from vivix.kit.metrics import CONTENT_TYPE, render
from vivix.operations.metrics import shared_state_registry
from vivix.operations.service import check_readiness

router = APIRouter(include_in_schema=False)


@router.get("/healthz")
async def healthz() -> Response:
    return json_response({"status": "ok"})


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    readiness = await check_readiness(runtime_of(request))
    return json_response(
        {"status": "ready" if readiness.ready else "unavailable", "checks": readiness.checks},
        200 if readiness.ready else 503,
    )


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    shared = await shared_state_registry(runtime_of(request))
    return Response(render(shared), media_type=CONTENT_TYPE)
