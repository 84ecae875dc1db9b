from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from vivix.accounts.endpoints import authorize, runtime_of
from vivix.accounts.repository import find_account
from vivix.generations import repository, service
from vivix.generations.schemas import generation_out, submitted_out
from vivix.kit.clock import parse_iso
from vivix.kit.errors import GenerationNotFound, InvalidParams
from vivix.kit.http import context_of, json_response, read_json_object
from vivix.kit.ids import is_uuid
from vivix.kit.pagination import decode_cursor, encode_cursor, parse_limit
from vivix.models import Generation, GenerationStatus

router = APIRouter(prefix="/api/v1", tags=["generations"])


@router.post("/generate", status_code=201, summary="Submit a generation")
async def generate(request: Request) -> Response:
    caller = await authorize(request)
    runtime = runtime_of(request)
    body, _raw = await read_json_object(request, runtime.settings.max_body_bytes)
    wait_s = _prefer_wait(request.headers.get("prefer"))
    result = await service.submit(runtime, caller, body, request.headers.get("idempotency-key"))
    context_of(request).balance = result.balance
    location = f"/api/v1/generations/{result.generation.id}"
    if wait_s and not result.replayed:
        waited = await service.wait_until_settled(
            runtime, caller.account.id, result.generation.id, wait_s
        )
        if waited is not None:
            headers = {"Location": location, "Preference-Applied": f"wait={wait_s:g}"}
            return json_response(await _with_queue_position(request, waited), 201, headers)
    if result.replayed:
        return json_response(
            await _with_queue_position(request, result.generation),
            200,
            {"Location": location, "Idempotent-Replayed": "true"},
        )
    return json_response(submitted_out(result.generation), 201, {"Location": location})


@router.get("/generations/{generation_id}", summary="Read a generation")
async def read_generation(request: Request, generation_id: str) -> Response:
    caller = await authorize(request)
    if not is_uuid(generation_id):
        raise GenerationNotFound()
    async with runtime_of(request).db.read() as session:
        gen = await repository.get_for_account(session, caller.account.id, generation_id.lower())
        if gen is None:
            raise GenerationNotFound()
        position = (
            await repository.queue_position(session, gen.id)
            if gen.status == GenerationStatus.PENDING
            else None
        )
    return json_response(generation_out(gen, queue_position=position))


@router.post("/generations/{generation_id}/cancel", summary="Cancel a generation")
async def cancel_generation(request: Request, generation_id: str) -> Response:
    caller = await authorize(request)
    if not is_uuid(generation_id):
        raise GenerationNotFound()
    runtime = runtime_of(request)
    gen = await service.cancel(runtime, caller.account.id, generation_id.lower())
    async with runtime.db.read() as session:
        account = await find_account(session, caller.account.id)
    if account is not None:
        context_of(request).balance = account.balance
    return json_response(generation_out(gen))


@router.get("/generations", summary="List generations, newest first")
async def list_generations(request: Request) -> Response:
    caller = await authorize(request)
    query = request.query_params
    limit = parse_limit(query.get("limit"))
    cursor = query.get("cursor")
    status = query.get("status")
    if status is not None and status not in {s.value for s in GenerationStatus}:
        raise InvalidParams("status", "must be one of " + ", ".join(s.value for s in GenerationStatus))
    metadata = {
        key[len("metadata[") : -1]: value
        for key, value in query.multi_items()
        if key.startswith("metadata[") and key.endswith("]") and len(key) > len("metadata[]")
    }
    async with runtime_of(request).db.read() as session:
        rows = await repository.list_for_account(
            session,
            caller.account.id,
            limit=limit + 1,
            before_id=decode_cursor(cursor) if cursor else None,
            status=status,
            model=query.get("model"),
            created_after=_timestamp(query.get("created_after"), "created_after"),
            created_before=_timestamp(query.get("created_before"), "created_before"),
            metadata=metadata,
        )
    has_more = len(rows) > limit
    page = rows[:limit]
    return json_response(
        {
            "data": [generation_out(g) for g in page],
            "next_cursor": encode_cursor(page[-1].id) if has_more else None,
            "has_more": has_more,
        }
    )


MAX_PREFER_WAIT_S = 60


def _prefer_wait(header: str | None) -> float:
    """Seconds from `Prefer: wait=N` (capped at 60); anything unparsable is ignored, as
    RFC 7240 asks of unknown preferences."""
    if not header:
        return 0.0
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "wait":
            try:
                seconds = float(value.strip().strip('"'))
            except ValueError:
                return 0.0
            if seconds != seconds or seconds <= 0:  # NaN or non-positive
                return 0.0
            return min(seconds, MAX_PREFER_WAIT_S)
    return 0.0


def _timestamp(raw: str | None, field: str) -> datetime | None:
    if raw is None or raw == "":
        return None
    try:
        return parse_iso(raw)
    except ValueError:
        raise InvalidParams(field, "must be an ISO 8601 timestamp like 2026-05-10T12:34:56Z") from None


async def _with_queue_position(request: Request, gen: Generation) -> dict[str, object]:
    position = None
    if gen.status == GenerationStatus.PENDING:
        async with runtime_of(request).db.read() as session:
            position = await repository.queue_position(session, gen.id)
    return generation_out(gen, queue_position=position)
