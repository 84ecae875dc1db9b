"""What the pages show of a generation and of the catalog: plain dicts and dataclasses
built from repository rows, so templates hold no rules."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Row

from vivix.catalog import pricing
from vivix.catalog.service import CatalogModel
from vivix.generations import service as generations
from vivix.generations.schemas import generation_out
from vivix.kit.clock import iso, utcnow
from vivix.models import ACTIVE_STATUSES
from vivix.providers.circuits import route_key
from vivix.providers.registry import LOCAL, is_configured
from vivix.users.service import Viewer

if TYPE_CHECKING:
    from vivix.runtime import Runtime

CATEGORY_ORDER = ("image", "video", "audio")
CATEGORY_LABELS = {"image": "Image", "video": "Video", "audio": "Audio"}
_RATIOS = {"1:1": "1-1", "4:5": "4-5", "9:16": "9-16", "16:9": "16-9"}


@dataclass(frozen=True, slots=True)
class ModelChoice:
    slug: str
    name: str
    category: str
    creator: str
    description: str
    band_min: int
    band_max: int
    available: bool
    unavailable_reason: str | None


def model_choices(
    runtime: Runtime, viewer: Viewer, availability: dict[str, str | None]
) -> list[ModelChoice]:
    """The models this account may use, in category order, with their price band (after
    the account's overrides) and whether they can take work now."""
    allowed = set(viewer.account.allowed_models)
    choices = []
    for model in runtime.catalog.all():
        if model.slug not in allowed:
            continue
        low, high = pricing.credits_band(
            model.spec, pricing.parse_override(viewer.account.price_overrides.get(model.slug))
        )
        reason = availability.get(model.slug, "not_configured")
        choices.append(
            ModelChoice(
                slug=model.slug,
                name=model.spec.name,
                category=model.spec.category,
                creator=model.spec.creator,
                description=model.spec.description,
                band_min=low,
                band_max=high,
                available=reason is None,
                unavailable_reason=reason,
            )
        )
    choices.sort(key=lambda c: (CATEGORY_ORDER.index(c.category), not c.available, c.name))
    return choices


def grouped(choices: list[ModelChoice]) -> list[tuple[str, list[ModelChoice]]]:
    return [
        (CATEGORY_LABELS[category], [c for c in choices if c.category == category])
        for category in CATEGORY_ORDER
        if any(c.category == category for c in choices)
    ]


async def live_view(runtime: Runtime, row: Row[Any]) -> dict[str, Any]:
    """`generation_view` with the API's `eta_ms` while it runs (for the live card)."""
    eta = await generations.eta_ms(runtime, row) if row.status in ACTIVE_STATUSES else None
    return generation_view(runtime, row, eta)


def generation_view(runtime: Runtime, row: Row[Any], eta_ms: int | None = None) -> dict[str, Any]:
    """The API's generation object plus what a page needs to draw it."""
    out = generation_out(
        row,
        output_url=runtime.storage.url_for,
        queue_position=getattr(row, "queue_position", None),
        eta=(eta_ms,) if eta_ms is not None else None,
    )
    model: CatalogModel | None = runtime.catalog.get(row.model)
    params = row.params or {}
    category = model.spec.category if model else "image"
    outputs = []
    for index, item in enumerate(out.get("outputs") or []):
        content_type = str(item.get("content_type") or "")
        kind = content_type.split("/", 1)[0] if content_type else category
        outputs.append({**item, "kind": kind, "index": index + 1})
    progress = out.get("progress")
    for optional in (
        "queue_position",
        "eta_ms",
        "progress",
        "credits_used",
        "duration_ms",
        "error",
    ):
        out.setdefault(optional, None)
    out.setdefault("message", None)
    out.update(
        model_name=model.spec.name if model else row.model,
        category=category,
        prompt=str(params.get("prompt") or ""),
        ratio=_RATIOS.get(
            str(params.get("aspect_ratio")), "16-9" if category == "video" else "1-1"
        ),
        is_active=row.status in ACTIVE_STATUSES,
        percent=None if progress is None else round(progress * 100),
        outputs_view=outputs,
        # When the estimate runs out, for studio.js to count down between updates.
        eta_until=iso(utcnow() + timedelta(milliseconds=eta_ms)) if eta_ms else None,
        created=row.created_at,
        completed=row.completed_at,
        results=int(params.get("number_results") or 1),
        wave=_wave(row.id) if category == "audio" else [],
    )
    return out


def _wave(seed: str) -> list[int]:
    """Decorative bar heights (4..36) for an audio result, stable per generation."""
    digest = hashlib.sha256(seed.encode()).digest()
    return [4 + (digest[i % len(digest)] ^ (i * 37)) % 33 for i in range(48)]


async def model_availability(runtime: Runtime) -> dict[str, str | None]:
    """Per model: None when a route can take work now, else `not_configured` (no route
    has credentials here) or `circuit_open` (every configured route is failing)."""
    open_routes = await runtime.circuits.open_routes()
    out: dict[str, str | None] = {}
    for model in runtime.catalog.all():
        configured = [
            r
            for r in model.spec.routes
            if r.provider == LOCAL or is_configured(r.provider, runtime.settings)
        ]
        if not configured:
            out[model.slug] = "not_configured"
        elif all(route_key(r.provider, r.upstream_model) in open_routes for r in configured):
            out[model.slug] = "circuit_open"
        else:
            out[model.slug] = None
    return out


def request_snippets(public_url: str, body: dict[str, Any]) -> dict[str, str]:
    """The same request for the API, as cURL and as Python (the key from the environment)."""
    payload = json.dumps(body, indent=2, ensure_ascii=False)
    shell_payload = payload.replace("'", "'\\''")
    curl = (
        f"curl -X POST {public_url}/api/v1/generate \\\n"
        '  -H "Authorization: Bearer $VIVIX_API_KEY" \\\n'
        '  -H "Content-Type: application/json" \\\n'
        f"  -d '{shell_payload}'"
    )
    python = (
        "import os\n\nimport requests\n\n"
        "response = requests.post(\n"
        f'    "{public_url}/api/v1/generate",\n'
        '    headers={"Authorization": f"Bearer {os.environ[\'VIVIX_API_KEY\']}"},\n'
        f"    json={_python_literal(body, 4)},\n"
        "    timeout=30,\n"
        ")\n"
        "response.raise_for_status()\n"
        'print(response.json()["generation_id"])'
    )
    return {"curl": curl, "python": python}


def _python_literal(value: Any, indent: int) -> str:
    """`value` as Python source, laid out like the JSON above (True/False/None, not JSON's)."""
    if isinstance(value, dict):
        inner = " " * (indent + 4)
        items = [
            f"{inner}{json.dumps(k)}: {_python_literal(v, indent + 4)}" for k, v in value.items()
        ]
        return "{\n" + ",\n".join(items) + ",\n" + " " * indent + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_python_literal(v, indent) for v in value) + "]"
    if isinstance(value, bool) or value is None:
        return repr(value)
    return json.dumps(value, ensure_ascii=False)
