"""Prices in integer credits: the model's pricing rows, optionally replaced or scaled by a
per-account override; the per-result multiplier for `number_results`; bands for /models.

Fail closed: a param combination that no row matches has no price and is never charged 0.
Catalog files and replacement rows are checked for full coverage when loaded or set, so
that case is caught by the operator, not by a customer's submit.
"""

from __future__ import annotations

import itertools
import math
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from vivix.catalog.schemas import ModelSpec, ParamValue, PricingRow
from vivix.kit.errors import InvalidParams

MAX_FACTOR = Decimal(100)


class PriceOverride(BaseModel):
    """Per-account pricing of one model: `factor` scales its rows, `rows` replace them."""

    model_config = ConfigDict(extra="forbid")

    factor: str | None = None
    rows: list[PricingRow] | None = Field(default=None, min_length=1)

    @field_validator("factor")
    @classmethod
    def _decimal_factor(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            factor = Decimal(value)
        except InvalidOperation:
            raise ValueError("factor must be a decimal number like 0.8") from None
        if not factor.is_finite() or factor <= 0 or factor > MAX_FACTOR:
            raise ValueError(f"factor must be greater than 0 and at most {MAX_FACTOR}")
        return str(factor)


_override_adapter = TypeAdapter(PriceOverride)


def parse_override(raw: dict[str, Any] | None) -> PriceOverride | None:
    if not raw:
        return None
    try:
        return _override_adapter.validate_python(raw)
    except ValidationError:
        return None  # stored by an older version in another shape: ignore, price normally


class NoPrice(InvalidParams):
    def __init__(self, slug: str) -> None:
        super().__init__(
            "model",
            f"{slug} has no price for this combination of params",
            next="Try other params; the operator has been missing a pricing row for these.",
        )


def effective_rows(model: ModelSpec, override: PriceOverride | None) -> list[PricingRow]:
    if override is not None and override.rows:
        return override.rows
    return model.pricing


def _factor(override: PriceOverride | None) -> Fraction:
    if override is None or override.factor is None:
        return Fraction(1)
    return Fraction(Decimal(override.factor))


def _matches(row: PricingRow, params: dict[str, Any]) -> bool:
    return all(params.get(key) == value for key, value in row.when.items())


def unit_price(model: ModelSpec, params: dict[str, Any], override: PriceOverride | None) -> int:
    """Credits for one result. A factor is applied per result, rounded up."""
    for row in effective_rows(model, override):
        if _matches(row, params):
            duration = int(params.get("duration") or 0)
            base = row.credits + row.per_second * duration
            return math.ceil(base * _factor(override))
    raise NoPrice(model.slug)


def freeze(model: ModelSpec, override: PriceOverride | None) -> dict[str, Any]:
    """The price inputs in force now (the effective rows and the factor), as JSON to keep
    with the generation: settlement prices with these, so an override or catalog change
    while the job renders can't change what it was admitted at."""
    return PriceOverride(
        rows=effective_rows(model, override),
        factor=None if override is None else override.factor,
    ).model_dump(exclude_none=True)


def thawed(frozen: dict[str, Any] | None) -> PriceOverride | None:
    """The frozen price inputs as an override that replaces the model's rows; None when
    nothing was frozen (a generation admitted before prices were frozen)."""
    return parse_override(frozen)


def result_count(model: ModelSpec, params: dict[str, Any]) -> int:
    return int(params.get("number_results", 1)) if "number_results" in model.params else 1


def estimate(model: ModelSpec, params: dict[str, Any], override: PriceOverride | None) -> int:
    """The upper bound of the charge: held at submit."""
    return unit_price(model, params, override) * result_count(model, params)


IMAGE_TIERS = (("4K", 4096), ("2K", 2048), ("1K", 1024))
VIDEO_TIERS = (("2160p", 2160), ("1080p", 1080), ("720p", 720))
SIZE_SLACK = 0.95  # providers round sizes (e.g. to multiples of 64)


def delivered_params(
    params: dict[str, Any], sizes: list[tuple[int | None, int | None, float | None]]
) -> dict[str, Any]:
    """The params the provider actually delivered, read off the outputs' (width, height,
    duration): a 4K request answered at 2K is a 2K delivery; a 10 s request answered
    with 6 s of video is a 6 s delivery. Unknown facts keep the requested value."""
    delivered = dict(params)
    known = [(w, h) for w, h, _ in sizes if w and h]
    resolution = params.get("resolution")
    if known and isinstance(resolution, str):
        tiers = IMAGE_TIERS if resolution.endswith("K") else VIDEO_TIERS
        names = [name for name, _ in tiers]
        # Images are tiered by their long side, video by its short side.
        side = max if tiers is IMAGE_TIERS else min
        smallest = min(side(w, h) for w, h in known)
        reached = next(
            (i for i, (_, pixels) in enumerate(tiers) if smallest >= pixels * SIZE_SLACK),
            len(tiers) - 1,
        )
        requested = names.index(resolution) if resolution in names else len(tiers) - 1
        delivered["resolution"] = names[max(reached, requested)]  # never above the request
    durations = [d for _, _, d in sizes if d]
    duration = params.get("duration")
    if durations and isinstance(duration, int):
        delivered["duration"] = max(1, min(duration, round(min(durations))))
    return delivered


def final_charge(
    model: ModelSpec,
    params: dict[str, Any],
    override: PriceOverride | None,
    sizes: list[tuple[int | None, int | None, float | None]],
    cap: int,
) -> int:
    """Price of what was actually delivered (count, resolution, duration), with the
    account's overrides, never more than the estimate held."""
    if not sizes:
        return 0
    try:
        unit = unit_price(model, delivered_params(params, sizes), override)
    except NoPrice:
        unit = cap // max(1, result_count(model, params))
    return min(cap, unit * len(sizes))


def _priced_param_space(model: ModelSpec, rows: list[PricingRow]) -> list[dict[str, ParamValue]]:
    """Every combination of the enum/boolean params that rows price on, at the extremes of
    `duration` when a row charges per second."""
    keys = sorted({key for row in rows for key in row.when})
    axes: list[list[tuple[str, ParamValue]]] = []
    for key in keys:
        spec = model.params.get(key)
        if spec is None:
            raise ValueError(f"{model.slug}: a pricing row matches on unknown param `{key}`")
        if spec.type == "enum":
            axes.append([(key, v) for v in spec.values or []])
        elif spec.type == "boolean":
            axes.append([(key, False), (key, True)])
        elif spec.type == "integer" and spec.min is not None and spec.max is not None:
            axes.append([(key, v) for v in range(spec.min, spec.max + 1)])
        else:
            raise ValueError(f"{model.slug}: pricing can't match on {spec.type} param `{key}`")
    duration = model.params.get("duration")
    if duration is not None and "duration" not in keys and duration.min is not None:
        axes.append([("duration", duration.min), ("duration", duration.max or duration.min)])
    return [dict(combo) for combo in itertools.product(*axes)]


def check_coverage(model: ModelSpec, rows: list[PricingRow]) -> None:
    """Raise ValueError unless every priced param combination matches a row."""
    for combo in _priced_param_space(model, rows):
        if not any(_matches(row, combo) for row in rows):
            shown = ", ".join(f"{k}={v}" for k, v in combo.items())
            raise ValueError(f"{model.slug}: no pricing row matches {shown}")


def credits_band(model: ModelSpec, override: PriceOverride | None) -> tuple[int, int]:
    """(min, max) per call at number_results = 1."""
    rows = effective_rows(model, override)
    prices = [unit_price(model, combo, override) for combo in _priced_param_space(model, rows)]
    return min(prices), max(prices)
