"""Generate: pick a model, fill the form rendered from its params schema, see the server's
price as the params change, submit, and watch the run turn into the result."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter
from starlette.datastructures import FormData, ImmutableMultiDict
from starlette.requests import Request
from starlette.responses import Response

from vivix.catalog import pricing
from vivix.catalog.params import validate_params
from vivix.catalog.service import CatalogModel
from vivix.generations import repository as generations_repository
from vivix.kit.errors import InvalidParams, VivixError
from vivix.kit.http import runtime_of
from vivix.kit.ids import is_uuid
from vivix.studio import forms, service, views
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
RECENT_RUNS = 6
PREFERRED_MODEL = "vivix-local-image"


@router.get("/generate")
async def generate_page(request: Request) -> Response:
    viewer = await require_viewer(request)
    runtime = runtime_of(request)
    query = request.query_params
    values: dict[str, Any] = {}
    slug = query.get("model")
    source_id = query.get("from")
    if source_id and is_uuid(source_id):
        # Edit & re-run: the form starts from that generation's model and params.
        async with runtime.db.autocommit() as connection:
            source = await generations_repository.read_for_account(
                connection, viewer.account.id, source_id.lower()
            )
        if source is not None:
            slug = source.model
            values = dict(source.params or {})
    context = await _form_context(request, runtime, viewer, slug, values, {})
    context["runs"] = await _recent_runs(runtime, viewer)
    return web_of(request).page(request, "generate.html", context, viewer=viewer)


@router.get("/generate/form")
async def form_fragment(request: Request) -> Response:
    """The form for another model (htmx swaps it in), keeping what was typed."""
    viewer = await require_viewer(request)
    runtime = runtime_of(request)
    model = _pick_model(runtime, viewer, request.query_params.get("model"))
    values = forms.values_from_form(model.spec, request.query_params) if model else {}
    context = await _form_context(
        request, runtime, viewer, model.slug if model else None, values, {}
    )
    return web_of(request).fragment(request, "partials/generate_form.html", context, viewer)


@router.get("/generate/estimate")
async def estimate_fragment(request: Request) -> Response:
    """The server's price for the params as they stand (never computed in the browser)."""
    viewer = await require_viewer(request)
    runtime = runtime_of(request)
    model = _pick_model(runtime, viewer, request.query_params.get("model"))
    context: dict[str, Any] = {"viewer": viewer, "estimate": None, "estimate_error": None}
    if model is not None:
        try:
            context["estimate"] = _estimate(model, viewer, request.query_params)
        except InvalidParams as exc:
            context["estimate_error"] = f"{exc.extra['field']} {exc.extra['reason']}"
    return web_of(request).fragment(request, "partials/estimate.html", context, viewer)


@router.post("/generate")
async def submit(request: Request) -> Response:
    viewer = await require_viewer(request)
    form = await read_form(request, viewer)
    runtime = runtime_of(request)
    # No fallback here: the model named is the one submitted (admission checks the allowlist).
    model = runtime.catalog.get(str(form.get("model") or ""))
    errors: dict[str, str] = {}
    form_error: VivixError | None = None
    submission = str(form.get("submission_id") or "")
    try:
        if model is None:
            raise InvalidParams("model", "choose one of the models listed")
        body = forms.body_from_form(model.spec, form)
        submitted = await service.submit_generation(
            runtime, viewer, body, submission if is_uuid(submission) else None
        )
    except InvalidParams as exc:
        errors[str(exc.extra.get("field", "model"))] = str(exc.extra.get("reason", exc.message))
    except VivixError as exc:
        form_error = exc
    if errors or form_error is not None:
        values = forms.values_from_form(model.spec, form) if model else {}
        context = await _form_context(
            request, runtime, viewer, model.slug if model else None, values, errors
        )
        context["form_error"] = form_error
        status = form_error.status if form_error is not None else 422
        if is_htmx(request):
            # The panel is swapped even on an error status (see htmx-config in base.html).
            return web_of(request).fragment(
                request, "partials/generate_form.html", context, viewer, 422
            )
        context["runs"] = await _recent_runs(runtime, viewer)
        return web_of(request).page(request, "generate.html", context, viewer=viewer, status=status)
    if not is_htmx(request):
        return redirect(f"/history/{submitted.generation_id}")
    viewer = await users.refreshed(runtime, viewer)
    async with runtime.db.autocommit() as connection:
        row = await generations_repository.read_for_account(
            connection, viewer.account.id, submitted.generation_id
        )
    assert model is not None
    assert row is not None
    context = await _form_context(
        request, runtime, viewer, model.slug, forms.values_from_form(model.spec, form), {}
    )
    context["new_run"] = await views.live_view(runtime, row)
    return web_of(request).fragment(
        request, "partials/generate_submitted.html", context, viewer, 201
    )


async def _recent_runs(runtime: Runtime, viewer: Viewer) -> list[dict[str, Any]]:
    async with runtime.db.autocommit() as connection:
        rows = await generations_repository.list_for_account(
            connection,
            viewer.account.id,
            limit=RECENT_RUNS,
            before_id=None,
            status=None,
            model=None,
            created_after=None,
            created_before=None,
            metadata={},
        )
    return [await views.live_view(runtime, row) for row in rows]


def _pick_model(runtime: Runtime, viewer: Viewer, slug: str | None) -> CatalogModel | None:
    """The requested model if this account may use it, else the preferred default."""
    allowed = viewer.account.allowed_models
    if slug and slug in allowed:
        model = runtime.catalog.get(slug)
        if model is not None:
            return model
    for candidate in (PREFERRED_MODEL, *allowed):
        model = runtime.catalog.get(candidate)
        if model is not None and candidate in allowed:
            return model
    return None


def _estimate(
    model: CatalogModel, viewer: Viewer, form: FormData | ImmutableMultiDict[str, Any]
) -> int:
    body = forms.body_from_form(model.spec, form)
    if not str(body.get("prompt") or "").strip():
        body["prompt"] = "estimate"  # the price never depends on the prompt's text
    params = validate_params(model.spec, body)
    override = pricing.parse_override(viewer.account.price_overrides.get(model.slug))
    return pricing.estimate(model.spec, params, override)


async def _form_context(
    request: Request,
    runtime: Runtime,
    viewer: Viewer,
    slug: str | None,
    values: dict[str, Any],
    errors: dict[str, str],
) -> dict[str, Any]:
    availability = await views.model_availability(runtime)
    choices = views.model_choices(runtime, viewer, availability)
    model = _pick_model(runtime, viewer, slug)
    estimate: int | None = None
    estimate_error: str | None = None
    fields: list[forms.FieldView] = []
    if model is not None:
        fields = forms.field_views(model.spec, values, errors)
        shown = {f.name: f.value for f in fields}
        try:
            estimate = _estimate(model, viewer, _as_form(model, shown))
        except InvalidParams as exc:
            estimate_error = f"{exc.extra['field']} {exc.extra['reason']}"
    return {
        "active": "generate",
        "choices": choices,
        "groups": views.grouped(choices),
        "model": model,
        "choice": next((c for c in choices if model and c.slug == model.slug), None),
        "fields": fields,
        "advanced_open": any(_differs_from_default(f) for f in fields if f.advanced),
        "errors": errors,
        "form_error": None,
        "estimate": estimate,
        "estimate_error": estimate_error,
        "submission_id": str(uuid.uuid4()),
        "segmented_options": forms.segmented_options,
    }


def _differs_from_default(view: forms.FieldView) -> bool:
    if view.error:
        return True
    if isinstance(view.value, list):
        return any(view.value)
    return view.value not in ("", None, view.spec.default)


def _as_form(model: CatalogModel, shown: dict[str, Any]) -> ImmutableMultiDict[str, Any]:
    items: list[tuple[str, Any]] = []
    for name, value in shown.items():
        if isinstance(value, list):
            items += [(name, v) for v in value]
        elif isinstance(value, bool):
            if value:
                items.append((name, "true"))
        else:
            items.append((name, str(value)))
    return ImmutableMultiDict(items)
