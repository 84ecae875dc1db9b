"""History: the account's generations (API and Studio), filters kept in the URL, cursor
paging, the detail page with players and actions, and the live card of a running one."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from vivix.generations import repository as generations_repository
from vivix.generations import service as generations
from vivix.kit.clock import parse_iso
from vivix.kit.errors import GenerationNotFound, InvalidParams
from vivix.kit.http import runtime_of
from vivix.kit.ids import is_uuid
from vivix.kit.pagination import decode_cursor, encode_cursor
from vivix.models import GenerationStatus
from vivix.studio import service, views
from vivix.studio.web import (
    StudioRoute,
    is_htmx,
    read_form,
    redirect,
    require_viewer,
    web_of,
)
from vivix.users import service as users
from vivix.users.service import Viewer

if TYPE_CHECKING:
    from vivix.runtime import Runtime

router = APIRouter(route_class=StudioRoute)
PAGE_SIZE = 24
SOURCES = ("studio", "api")
_FILTER_KEYS = ("model", "category", "status", "source", "from", "to")


@router.get("/history")
async def history_page(request: Request) -> Response:
    viewer = await require_viewer(request)
    runtime = runtime_of(request)
    filters = _filters(request, runtime)
    cursor = request.query_params.get("cursor")
    models = None
    if filters["category"]:
        models = [m.slug for m in runtime.catalog.all() if m.spec.category == filters["category"]]
    async with runtime.db.autocommit() as connection:
        rows = await generations_repository.list_for_account(
            connection,
            viewer.account.id,
            limit=PAGE_SIZE + 1,
            before_id=decode_cursor(cursor) if cursor else None,
            status=filters["status"] or None,
            model=filters["model"] or None,
            created_after=_day_start(filters["from"]),
            created_before=_day_start(filters["to"], next_day=True),
            metadata={},
            source=filters["source"] or None,
            models=models,
        )
    page = rows[:PAGE_SIZE]
    kept = {k: v for k, v in filters.items() if v}
    next_url = None
    if len(rows) > PAGE_SIZE:
        next_url = "/history?" + urlencode({**kept, "cursor": encode_cursor(page[-1].id)})
    context = {
        "active": "history",
        "items": [views.generation_view(runtime, row) for row in page],
        "filters": filters,
        "filtered": bool(kept),
        "next_url": next_url,
        "first_url": ("/history?" + urlencode(kept)) if cursor else None,
        "model_options": sorted(
            ((m.slug, m.spec.name) for m in runtime.catalog.all()), key=lambda x: x[1]
        ),
        "statuses": [s.value for s in GenerationStatus],
        "sources": SOURCES,
        "categories": views.CATEGORY_ORDER,
    }
    return web_of(request).page(request, "history.html", context, viewer=viewer)


def _filters(request: Request, runtime: Runtime) -> dict[str, str]:
    """The filters from the URL; a value that is not one of the choices is dropped."""
    query = request.query_params
    out = {key: (query.get(key) or "").strip() for key in _FILTER_KEYS}
    if out["model"] and runtime.catalog.get(out["model"]) is None:
        out["model"] = ""
    if out["category"] not in views.CATEGORY_ORDER:
        out["category"] = ""
    if out["status"] not in {s.value for s in GenerationStatus}:
        out["status"] = ""
    if out["source"] not in SOURCES:
        out["source"] = ""
    for key in ("from", "to"):
        if out[key] and _day_start(out[key]) is None:
            out[key] = ""
    return out


def _day_start(day: str, *, next_day: bool = False) -> datetime | None:
    if not day:
        return None
    try:
        start = parse_iso(day[:10] + "T00:00:00Z")
    except ValueError:
        return None
    return start + timedelta(days=1) if next_day else start


async def _generation(runtime: Runtime, viewer: Viewer, generation_id: str) -> Any:
    """The viewer's account's generation, or 404 (unknown and foreign ids alike)."""
    if not is_uuid(generation_id):
        raise GenerationNotFound()
    async with runtime.db.autocommit() as connection:
        row = await generations_repository.read_for_account(
            connection, viewer.account.id, generation_id.lower()
        )
    if row is None:
        raise GenerationNotFound()
    return row


@router.get("/history/{generation_id}")
async def detail_page(request: Request, generation_id: str) -> Response:
    viewer = await require_viewer(request)
    runtime = runtime_of(request)
    gen = await views.live_view(runtime, await _generation(runtime, viewer, generation_id))
    body = {"model": gen["model"], **gen["params"]}
    if gen["metadata"]:
        body["metadata"] = gen["metadata"]
    context = {
        "active": "history",
        "gen": gen,
        "snippets": views.request_snippets(web_of(request).public_url, body),
    }
    return web_of(request).page(request, "history_detail.html", context, viewer=viewer)


@router.get("/history/{generation_id}/card")
async def run_card(request: Request, generation_id: str) -> Response:
    """The live card (htmx polls it while the generation runs), with the wallet."""
    viewer = await require_viewer(request)
    runtime = runtime_of(request)
    gen = await views.live_view(runtime, await _generation(runtime, viewer, generation_id))
    return web_of(request).fragment(request, "partials/run_card_live.html", {"gen": gen}, viewer)


@router.get("/history/{generation_id}/tile")
async def gallery_tile(request: Request, generation_id: str) -> Response:
    """A running generation's tile in the gallery, refreshed when it changes."""
    viewer = await require_viewer(request)
    runtime = runtime_of(request)
    gen = views.generation_view(runtime, await _generation(runtime, viewer, generation_id))
    return web_of(request).fragment(request, "partials/tile.html", {"gen": gen}, viewer)


@router.post("/history/{generation_id}/cancel")
async def cancel(request: Request, generation_id: str) -> Response:
    viewer = await require_viewer(request)
    await read_form(request, viewer)
    runtime = runtime_of(request)
    row = await _generation(runtime, viewer, generation_id)
    await generations.cancel(runtime, viewer.account.id, row.id)
    if not is_htmx(request):
        return redirect(f"/history/{row.id}")
    viewer = await users.refreshed(runtime, viewer)
    gen = views.generation_view(runtime, await _generation(runtime, viewer, row.id))
    return web_of(request).fragment(request, "partials/run_card_live.html", {"gen": gen}, viewer)


@router.post("/history/{generation_id}/rerun")
async def rerun(request: Request, generation_id: str) -> Response:
    """The same model and params again (`vary`: with a new random seed)."""
    viewer = await require_viewer(request)
    form = await read_form(request, viewer)
    runtime = runtime_of(request)
    row = await _generation(runtime, viewer, generation_id)
    params = dict(row.params or {})
    if form.get("vary") == "1":
        params.pop("seed", None)
    body: dict[str, Any] = {"model": row.model, **params}
    if row.metadata_:
        body["metadata"] = row.metadata_
    submission = str(form.get("submission_id") or "")
    try:
        submitted = await service.submit_generation(
            runtime, viewer, body, submission if is_uuid(submission) else None
        )
    except InvalidParams as exc:
        # The catalog changed since (a param removed or narrowed): edit it in the form.
        raise InvalidParams(
            str(exc.extra.get("field")),
            f"{exc.extra.get('reason')} — use Edit & re-run to adjust it",
        ) from None
    return redirect(f"/history/{submitted.generation_id}")
