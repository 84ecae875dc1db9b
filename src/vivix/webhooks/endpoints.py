"""/api/v1/webhooks: an account's webhook endpoints and deliveries (API.md §5.1)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from vivix.accounts.gate import Caller, authorize
from vivix.kit.http import PlainRoute, json_response, read_json_object, runtime_of
from vivix.kit.pagination import parse_limit
from vivix.webhooks import service

router = APIRouter(prefix="/api/v1/webhooks", tags=["webhooks"], route_class=PlainRoute)


async def _caller(request: Request) -> Caller:
    async with runtime_of(request).db.autocommit() as connection:
        return await authorize(request, connection)


async def _body(request: Request, *, optional: bool = False) -> dict[str, Any]:
    """The JSON object body; with `optional`, a request without a body counts as `{}`."""
    if optional and not request.headers.get("content-type"):
        length = request.headers.get("content-length")
        if length is None or length == "0":
            return {}
    body, _raw = await read_json_object(request, runtime_of(request).settings.max_body_bytes)
    return body


@router.get("", summary="List webhook endpoints")
async def list_webhooks(request: Request) -> Response:
    caller = await _caller(request)
    data = await service.list_endpoints(runtime_of(request), caller.account.id)
    return json_response({"data": data})


@router.post("", status_code=201, summary="Create a webhook endpoint")
async def create_webhook(request: Request) -> Response:
    caller = await _caller(request)
    body = await _body(request)
    out = await service.create_for_account(runtime_of(request), caller.account.id, body)
    return json_response(out, 201, {"Location": f"/api/v1/webhooks/{out['id']}"})


@router.patch("/{webhook_id}", summary="Change a webhook endpoint")
async def update_webhook(request: Request, webhook_id: str) -> Response:
    caller = await _caller(request)
    body = await _body(request)
    out = await service.update_for_account(runtime_of(request), caller.account.id, webhook_id, body)
    return json_response(out)


@router.delete("/{webhook_id}", status_code=204, summary="Delete a webhook endpoint")
async def delete_webhook(request: Request, webhook_id: str) -> Response:
    caller = await _caller(request)
    await service.delete_for_account(runtime_of(request), caller.account.id, webhook_id)
    return Response(status_code=204)


@router.post("/{webhook_id}/rotate-secret", summary="Rotate a webhook endpoint's secret")
async def rotate_secret(request: Request, webhook_id: str) -> Response:
    caller = await _caller(request)
    expire_now = service.parse_expire_previous_now(await _body(request, optional=True))
    out = await service.rotate_for_account(
        runtime_of(request), caller.account.id, webhook_id, expire_now
    )
    return json_response(out)


@router.post("/{webhook_id}/test", status_code=201, summary="Send a test delivery")
async def test_webhook(request: Request, webhook_id: str) -> Response:
    caller = await _caller(request)
    out = await service.queue_test(runtime_of(request), caller.account.id, webhook_id)
    return json_response(out, 201)


@router.get("/{webhook_id}/deliveries", summary="List an endpoint's deliveries")
async def list_deliveries(request: Request, webhook_id: str) -> Response:
    caller = await _caller(request)
    query = request.query_params
    page = await service.list_deliveries(
        runtime_of(request),
        caller.account.id,
        webhook_id,
        limit=parse_limit(query.get("limit")),
        cursor=query.get("cursor") or None,
        status=query.get("status") or None,
        generation_id=query.get("generation_id") or None,
    )
    return json_response(page)


@router.get("/{webhook_id}/deliveries/{delivery_id}", summary="One delivery and its attempts")
async def show_delivery(request: Request, webhook_id: str, delivery_id: str) -> Response:
    caller = await _caller(request)
    out = await service.show_delivery(
        runtime_of(request), caller.account.id, webhook_id, delivery_id
    )
    return json_response(out)


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/redeliver", summary="Send a delivery again now"
)
async def redeliver(request: Request, webhook_id: str, delivery_id: str) -> Response:
    caller = await _caller(request)
    out = await service.redeliver(runtime_of(request), caller.account.id, webhook_id, delivery_id)
    return json_response(out)
