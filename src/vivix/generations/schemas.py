"""The generation object as the API shows it (API.md §3), by status."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Row

from vivix.kit.clock import iso, utcnow
from vivix.models import Generation, GenerationStatus, NewGeneration


def _ms(start: datetime, end: datetime) -> int:
    return max(0, int((end - start).total_seconds() * 1000))


def generation_out(
    gen: Generation | Row[Any],
    *,
    output_url: Callable[[str], str],
    queue_position: int | None = None,
    eta: tuple[int | None] | None = None,
) -> dict[str, Any]:
    """From the model or a `generations.repository` row (same attribute names).
    `output_url` turns a stored output's storage key into its public URL
    (`OutputStore.url_for`), so URLs follow the current public URL settings. `eta`:
    `(eta_ms,)` where it was estimated (`service.eta_ms`), shown while running."""
    out: dict[str, Any] = {
        "generation_id": gen.id,
        "status": gen.status,
        "model": gen.model,
        "credits_estimate": gen.credits_estimate,
        "created_at": iso(gen.created_at),
    }
    status = gen.status
    if status in (GenerationStatus.PENDING, GenerationStatus.PROCESSING):
        out["elapsed_ms"] = _ms(gen.created_at, utcnow())
        if status == GenerationStatus.PENDING and queue_position is not None:
            out["queue_position"] = queue_position
        if status == GenerationStatus.PROCESSING and gen.progress is not None:
            out["progress"] = round(gen.progress, 3)
        if eta is not None:
            out["eta_ms"] = eta[0]
    else:
        completed = gen.completed_at or gen.created_at
        out["completed_at"] = iso(completed)
        out["credits_used"] = gen.credits_used or 0
        if status == GenerationStatus.COMPLETED:
            # Retention deleted the files: no URL to give (API.md: valid for the retention).
            stored = [] if gen.expired_at is not None else gen.outputs or []
            outputs = [_shown_output(o, output_url) for o in stored]
            out["output_url"] = outputs[0]["url"] if outputs else None
            out["output_urls"] = [o["url"] for o in outputs]
            out["duration_ms"] = _ms(gen.created_at, completed)
            out["outputs"] = outputs
        elif status == GenerationStatus.FAILED:
            out["error"] = gen.error_code
            out["message"] = gen.error_message
        if gen.expired_at is not None:
            out["expired"] = True
            out["expired_at"] = iso(gen.expired_at)
    out["source"] = gen.source
    out["params"] = gen.params
    out["metadata"] = gen.metadata_
    return out


def webhook_payload(
    gen: Generation, event: str, *, output_url: Callable[[str], str]
) -> dict[str, Any]:
    """A webhook's body (API.md §5.1): the generation as GET shows it, plus `event` and
    the getvivix payload's names as aliases; output fields are null unless completed."""
    out = generation_out(gen, output_url=output_url)
    out["event"] = event
    out["credits_charged"] = out.get("credits_used", 0)
    if gen.status != GenerationStatus.COMPLETED:
        out["output_url"] = None
        out["output_urls"] = None
    if gen.status == GenerationStatus.FAILED:
        out["error_code"] = out.get("error")
        out["error_message"] = out.get("message")
    return out


def _shown_output(stored: dict[str, Any], output_url: Callable[[str], str]) -> dict[str, Any]:
    shown = {"url": output_url(stored["key"])}
    shown.update((name, value) for name, value in stored.items() if name != "key")
    return shown


def submitted_out(generation: NewGeneration) -> dict[str, Any]:
    """The 201 body, from the row the submit inserted."""
    return {
        "generation_id": generation.id,
        "status": generation.status,
        "model": generation.model,
        "credits_estimate": generation.credits_estimate,
        "created_at": iso(generation.created_at),
    }
