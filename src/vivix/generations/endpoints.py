from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from vivix.accounts.gate import authorize, pass_gate
from vivix.accounts.repository import find_account
from vivix.accounts.service import key_hash_from_header
from vivix.generations import repository, service
from vivix.generations.schemas import generation_out, submitted_out
from vivix.kit.clock import parse_iso
from vivix.kit.errors import GenerationNotFound, InvalidParams
from vivix.kit.http import PlainRoute, context_of, json_response, read_json_object, runtime_of
from vivix.kit.ids import is_uuid
from vivix.kit.logging import bind_generation
from vivix.kit.pagination import decode_cursor, encode_cursor, parse_limit
from vivix.models import GenerationStatus

if TYPE_CHECKING:
    from vivix.runtime import Runtime

router = APIRouter(prefix="/api/v1", tags=["generations"], route_class=PlainRoute)


@router.post("/generate", status_code=201, summary="Submit a generation")
async def generate(request: Request) -> Response:
    runtime = runtime_of(request)
    async with runtime.db.reader() as connection:
        caller = await authorize(request, connection)
    body, _raw = await read_json_object(request, runtime.settings.max_body_bytes)
    wait_s = _prefer_wait(request.headers.get("prefer"))
    result = await service.submit(runtime, caller, body, request.headers.get("idempotency-key"))
    context_of(request).balance = result.balance
    location = f"/api/v1/generations/{result.generation_id}"
    if result.replay is not None:
        return json_response(
            await shown_with_eta(runtime, result.replay),
            200,
            {"Location": location, "Idempotent-Replayed": "true"},
        )
    if wait_s:
        waited = await service.wait_until_settled(
            runtime, caller.account.id, result.generation_id, wait_s
        )
        if waited is not None:
            headers = {"Location": location, "Preference-Applied": f"wait={wait_s:g}"}
            return json_response(await shown_with_eta(runtime, waited), 201, headers)
    assert result.created is not None
    return json_response(submitted_out(result.created), 201, {"Location": location})


@router.get("/generations/{generation_id}", summary="Read a generation")
async def read_generation(request: Request, generation_id: str) -> Response:
    runtime = runtime_of(request)
    key_hash = key_hash_from_header(runtime.secret, request.headers.get("authorization"))
    wanted = generation_id.lower() if is_uuid(generation_id) else None
    if wanted is not None:
        bind_generation(wanted)
    async with runtime.db.reader() as connection:
        row = await repository.read_with_caller(connection, key_hash, wanted)
    await pass_gate(request, row)
    if row is None or row.id is None:
        raise GenerationNotFound()
    return json_response(await shown_with_eta(runtime, row))


@router.post("/generations/{generation_id}/cancel", summary="Cancel a generation")
async def cancel_generation(request: Request, generation_id: str) -> Response:
    runtime = runtime_of(request)
    async with runtime.db.autocommit() as connection:
        caller = await authorize(request, connection)
    if not is_uuid(generation_id):
        raise GenerationNotFound()
    bind_generation(generation_id.lower())
    gen = await service.cancel(runtime, caller.account.id, generation_id.lower())
    async with runtime.db.read() as session:
        account = await find_account(session, caller.account.id)
    if account is not None:
        context_of(request).balance = account.balance
    return json_response(generation_out(gen, output_url=runtime.storage.url_for))


@router.get("/generations", summary="List generations, newest first")
async def list_generations(request: Request) -> Response:
    query = request.query_params
    runtime = runtime_of(request)
    async with runtime.db.autocommit() as connection:
        caller = await authorize(request, connection)
        limit = parse_limit(query.get("limit"))
        cursor = query.get("cursor")
        status = query.get("status")
        if status is not None and status not in {s.value for s in GenerationStatus}:
            raise InvalidParams(
                "status", "must be one of " + ", ".join(s.value for s in GenerationStatus)
            )
        metadata = {
            key[len("metadata[") : -1]: value
            for key, value in query.multi_items()
            if key.startswith("metadata[") and key.endswith("]") and len(key) > len("metadata[]")
        }
        model = query.get("model")
        _refuse_nul("model", model)
        for key, value in metadata.items():
            _refuse_nul(f"metadata[{key}]", key + value)
        rows = await repository.list_for_account(
            connection,
            caller.account.id,
            limit=limit + 1,
            before_id=decode_cursor(cursor) if cursor else None,
            status=status,
            model=model,
            created_after=_timestamp(query.get("created_after"), "created_after"),
            created_before=_timestamp(query.get("created_before"), "created_before"),
            metadata=metadata,
        )
    has_more = len(rows) > limit
    page = rows[:limit]
    return json_response(
        {
            "data": [generation_out(g, output_url=runtime.storage.url_for) for g in page],
            "next_cursor": encode_cursor(page[-1].id) if has_more else None,
            "has_more": has_more,
        }
    )


def _refuse_nul(field: str, value: str | None) -> None:
    # Nothing stored can contain NUL (metadata refuses it), and PostgreSQL rejects it in text.
    if value is not None and "\x00" in value:
        raise InvalidParams(field.replace("\x00", "\\0"), "must not contain NUL characters")


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
        raise InvalidParams(
            field, "must be an ISO 8601 timestamp like 2026-05-10T12:34:56Z"
        ) from None


def shown(runtime: Runtime, row: Any, eta: tuple[int | None] | None = None) -> dict[str, object]:
    """The generation as GET /generations/{id} shows it, from a `generations.repository`
    row (event streams show every change this way too); `eta`: see `generation_out`."""
    return generation_out(
        row, output_url=runtime.storage.url_for, queue_position=row.queue_position, eta=eta
    )


async def shown_with_eta(runtime: Runtime, row: Any) -> dict[str, object]:
    """`shown` with `eta_ms` while pending or processing (the status read)."""
    return shown(runtime, row, (await service.eta_ms(runtime, row),))
