"""Prices in integer credits (vivix.catalog.pricing): rows matched on params, the per-result
multiplier, per-second video pricing, per-account factors (rounded up, exactly) and
replacement rows, the coverage check that fails closed, and the band /models shows."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from vivix.catalog import pricing
from vivix.catalog.params import validate_params
from vivix.catalog.schemas import ModelSpec, ParamSpec, PricingRow, RouteSpec
from vivix.catalog.service import Catalog
from vivix.kit.errors import InvalidParams

CATALOG = Catalog.load()


def spec(slug: str) -> ModelSpec:
    model = CATALOG.get(slug)
    assert model is not None
    return model.spec


def params_for(slug: str, **given: Any) -> dict[str, Any]:
    """Validated params with defaults, exactly as a submit prices them."""
    return validate_params(spec(slug), {"model": slug, "prompt": "p", **given})


def factor(value: str) -> pricing.PriceOverride:
    return pricing.PriceOverride(factor=value)


def rows(*entries: dict[str, Any]) -> pricing.PriceOverride:
    return pricing.PriceOverride(rows=[PricingRow.model_validate(e) for e in entries])


GROK = "grok-imagine-image-quality"
WAN = "wan-2.7-text-to-video"
SEEDREAM = "seedream-4"


def tiny_model(**param_specs: ParamSpec) -> ModelSpec:
    return ModelSpec(
        slug="tiny-model",
        name="Tiny",
        category="image",
        creator="Tests",
        description="A model built for a pricing test.",
        params={"prompt": ParamSpec(type="string", required=True, max_length=10), **param_specs},
        pricing=[PricingRow(credits=1)],
        routes=[RouteSpec(provider="local", upstream_model="image")],
    )


# -- estimate --------------------------------------------------------------------------------


@pytest.mark.parametrize(("resolution", "credits"), [("1K", 80), ("2K", 140), ("4K", 211)])
def test_rows_are_matched_on_params(resolution: str, credits: int) -> None:
    params = params_for(GROK, resolution=resolution)
    assert pricing.estimate(spec(GROK), params, None) == credits


def test_default_params_are_priced_when_not_given() -> None:
    assert pricing.estimate(spec(GROK), params_for(GROK), None) == 140  # default 2K


@pytest.mark.parametrize("count", [1, 2, 3, 4])
def test_number_results_multiplies_the_price(count: int) -> None:
    params = params_for(GROK, resolution="4K", number_results=count)
    assert pricing.result_count(spec(GROK), params) == count
    assert pricing.estimate(spec(GROK), params, None) == 211 * count


def test_number_results_is_ignored_by_models_without_it() -> None:
    assert pricing.result_count(spec(WAN), {"number_results": 4, "duration": 5}) == 1


@pytest.mark.parametrize(
    ("resolution", "audio", "duration", "credits"),
    [
        ("720p", False, 2, 320 + 40 * 2),
        ("720p", True, 5, 400 + 60 * 5),
        ("1080p", False, 7, 480 + 72 * 7),
        ("1080p", True, 10, 540 + 90 * 10),
    ],
)
def test_video_is_priced_per_second_on_top_of_the_row(
    resolution: str, audio: bool, duration: int, credits: int
) -> None:
    params = params_for(WAN, resolution=resolution, audio=audio, duration=duration)
    assert pricing.estimate(spec(WAN), params, None) == credits


# -- overrides -------------------------------------------------------------------------------


def test_factor_is_applied_per_result_and_rounded_up() -> None:
    model = spec(GROK)
    assert pricing.estimate(model, params_for(GROK, resolution="4K"), factor("0.8")) == 169
    assert pricing.estimate(model, params_for(GROK, resolution="2K"), factor("0.8")) == 112
    # 80 × 0.33 = 26.4 → 27 per result, × 4 = 108 (not ⌈320 × 0.33⌉ = 106).
    four = params_for(GROK, resolution="1K", number_results=4)
    assert pricing.estimate(model, four, factor("0.33")) == 108
    assert pricing.estimate(model, params_for(GROK, resolution="1K"), factor("1.5")) == 120
    assert pricing.estimate(model, params_for(GROK, resolution="4K"), factor("1.001")) == 212


def test_factor_arithmetic_is_exact_not_floating_point() -> None:
    # 30 × 0.1 is 3.0000000000000004 in binary floating point, which would round up to 4.
    params = params_for(SEEDREAM, resolution="1K")
    assert pricing.estimate(spec(SEEDREAM), params, factor("0.1")) == 3
    # 45 × 0.2 = 9 exactly (float: 9.000000000000002).
    assert pricing.estimate(spec(SEEDREAM), params_for(SEEDREAM), factor("0.2")) == 9


def test_factor_applies_to_per_second_prices_too() -> None:
    params = params_for(WAN, resolution="720p", duration=3)  # 320 + 120 = 440
    assert pricing.estimate(spec(WAN), params, factor("0.75")) == 330
    assert pricing.estimate(spec(WAN), params, factor("0.7")) == 308


def test_replacement_rows_replace_the_models_rows() -> None:
    override = rows(
        {"when": {"resolution": "1K"}, "credits": 1},
        {"when": {"resolution": "2K"}, "credits": 2},
        {"when": {"resolution": "4K"}, "credits": 3},
    )
    model = spec(GROK)
    assert pricing.estimate(model, params_for(GROK, resolution="4K"), override) == 3
    many = params_for(GROK, resolution="2K", number_results=4)
    assert pricing.estimate(model, many, override) == 8
    assert pricing.credits_band(model, override) == (1, 3)


def test_first_matching_row_prices() -> None:
    override = rows({"when": {"resolution": "4K"}, "credits": 500}, {"credits": 7})
    model = spec(GROK)
    assert pricing.estimate(model, params_for(GROK, resolution="4K"), override) == 500
    assert pricing.estimate(model, params_for(GROK, resolution="1K"), override) == 7


@pytest.mark.parametrize("bad", ["0", "-1", "abc", "NaN", "Infinity", "100.01", ""])
def test_bad_factors_are_refused(bad: str) -> None:
    with pytest.raises(ValidationError):
        factor(bad)


def test_factor_is_normalised_and_stored_as_a_decimal_string() -> None:
    assert factor("0.80").factor == "0.80"
    assert factor("100").factor == "100"
    assert pricing.parse_override({"factor": "0.5"}) == factor("0.5")


def test_stored_override_in_an_unknown_shape_prices_normally() -> None:
    for stored in (None, {}, {"discount": 5}, {"factor": "zero"}):
        override = pricing.parse_override(stored)
        assert override is None
        assert pricing.estimate(spec(GROK), params_for(GROK), override) == 140


# -- fail closed -------------------------------------------------------------------------------


def test_params_without_a_matching_row_have_no_price() -> None:
    override = pricing.PriceOverride.model_construct(
        factor=None, rows=[PricingRow(when={"resolution": "1K"}, credits=1)]
    )
    with pytest.raises(pricing.NoPrice) as caught:
        pricing.estimate(spec(GROK), params_for(GROK, resolution="4K"), override)
    assert isinstance(caught.value, InvalidParams)  # a 422 at submit, never a charge of 0
    assert caught.value.status == 422


def test_coverage_check_names_the_first_gap() -> None:
    gap = [
        PricingRow(when={"resolution": "720p", "audio": False}, credits=1),
        PricingRow(when={"resolution": "720p", "audio": True}, credits=1),
        PricingRow(when={"resolution": "1080p", "audio": False}, credits=1),
    ]
    with pytest.raises(ValueError, match="resolution=1080p") as caught:
        pricing.check_coverage(spec(WAN), gap)
    assert "audio=True" in str(caught.value)
    pricing.check_coverage(spec(WAN), [*gap, PricingRow(when={"audio": True}, credits=1)])


def test_coverage_check_refuses_rows_on_unknown_or_free_text_params() -> None:
    with pytest.raises(ValueError, match="unknown param `colour`"):
        pricing.check_coverage(spec(GROK), [PricingRow(when={"colour": "red"}, credits=1)])
    with pytest.raises(ValueError, match="string param `prompt`"):
        pricing.check_coverage(spec(GROK), [PricingRow(when={"prompt": "x"}, credits=1)])


def test_coverage_over_an_integer_param_checks_every_value() -> None:
    model = tiny_model(steps=ParamSpec(type="integer", min=1, max=3, default=1))
    covered = [PricingRow(when={"steps": n}, credits=n) for n in (1, 2, 3)]
    pricing.check_coverage(model, covered)
    with pytest.raises(ValueError, match="steps=3"):
        pricing.check_coverage(model, covered[:2])
    assert pricing.credits_band(model, rows(*(r.model_dump() for r in covered))) == (1, 3)


def test_every_shipped_model_is_fully_priced() -> None:
    for model in CATALOG.all():
        pricing.check_coverage(model.spec, model.spec.pricing)
        low, high = pricing.credits_band(model.spec, None)
        assert 0 <= low <= high, model.slug


# -- bands -----------------------------------------------------------------------------------


def test_band_spans_the_cheapest_and_dearest_single_result() -> None:
    assert pricing.credits_band(spec(GROK), None) == (80, 211)
    assert pricing.credits_band(spec(WAN), None) == (400, 1440)
    assert pricing.credits_band(spec(SEEDREAM), None) == (30, 60)
    assert pricing.credits_band(spec(GROK), factor("0.8")) == (64, 169)
    assert pricing.credits_band(spec(WAN), factor("0.5")) == (200, 720)


# -- final charge ----------------------------------------------------------------------------


def test_final_charge_is_what_was_delivered_capped_at_the_estimate() -> None:
    model = spec(GROK)
    params = params_for(GROK, resolution="2K", number_results=4)
    cap = pricing.estimate(model, params, None)
    square = (2048, 2048, None)
    assert pricing.final_charge(model, params, None, [square] * 4, cap) == 560
    assert pricing.final_charge(model, params, None, [square] * 3, cap) == 420
    assert pricing.final_charge(model, params, None, [], cap) == 0
    # A 4K request served at 2K is charged as 2K.
    four_k = params_for(GROK, resolution="4K")
    assert pricing.final_charge(model, four_k, None, [square], 211) == 140
    # Never above the estimate, whatever the provider returns.
    assert pricing.final_charge(model, params, None, [square] * 6, cap) == cap
    # The account's factor applies to the final charge as it did to the hold.
    assert pricing.final_charge(model, four_k, factor("0.8"), [(4096, 4096, None)], 169) == 169


def test_final_charge_of_a_shorter_video_is_priced_by_its_length() -> None:
    model = spec(WAN)
    params = params_for(WAN, resolution="720p", duration=10)
    cap = pricing.estimate(model, params, None)
    delivered = [(1280, 720, 6.0)]
    assert pricing.final_charge(model, params, None, delivered, cap) == 320 + 40 * 6
    assert pricing.final_charge(model, params, None, [(1280, 720, 10.0)], cap) == cap
