"""Whether a model can take work now: one answer for the catalog (`available`,
`unavailable_reason`) and for admission (503 `PROVIDER_DOWN` with the same `reason`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from vivix.catalog.service import CatalogModel
from vivix.kit.clock import utcnow
from vivix.providers.circuits import route_key
from vivix.providers.registry import LOCAL, is_configured
from vivix.settings import Settings

UnavailableReason = Literal["not_configured", "circuit_open"]


@dataclass(frozen=True, slots=True)
class Availability:
    available: bool
    reason: UnavailableReason | None = None
    # circuit_open only: seconds until the first open circuit may let work through again.
    retry_after_s: int | None = None


AVAILABLE = Availability(True)


def availability_of(
    model: CatalogModel,
    settings: Settings,
    open_routes: dict[str, datetime],
    *,
    test_key: bool = False,
) -> Availability:
    """`open_routes` is `CircuitBreakers.open_routes()`. Test keys render every model on the
    local renderer, so every model is available to them."""
    if test_key:
        return AVAILABLE
    reopens: list[float] = []
    now = utcnow()
    for route in model.spec.routes:
        if route.provider != LOCAL and not is_configured(route.provider, settings):
            continue
        until = open_routes.get(route_key(route.provider, route.upstream_model))
        if until is None:
            return AVAILABLE
        reopens.append((until - now).total_seconds())
    if not reopens:
        # No route has credentials here: only the operator can change that.
        return Availability(False, "not_configured")
    return Availability(False, "circuit_open", max(1, math.ceil(min(reopens))))
