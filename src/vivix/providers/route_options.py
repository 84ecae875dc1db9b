"""A catalog route's `options`: parsing them, and mapping our canonical params onto the
flat JSON input that per-model APIs (fal, Replicate) take.

The option helpers (`option_table`, `option_choice`, `option_string_map`,
`option_string_list`) read one key each and raise ProviderFatalError for a bad value:
the route is misconfigured, so the worker moves on to the next mirror.

`build_input` gives fal-style and Replicate-style adapters one vocabulary of route
options (all optional):
- `fields`: our param → upstream field, overriding the provider's `InputConventions`;
  `false` or `""` drops it. Params with no field (model-specific ones included) are not
  sent.
- `values`: per param, our value as a key (5 → "5", true → "true") → the upstream value,
  e.g. `values.duration = {"5" = "5s"}`; values not listed pass unchanged.
- `size`: how aspect ratio and resolution are sent, instead of as they are (where the
  provider accepts the mode): `width_height` → top-level `width`/`height`, `image_size`
  → `image_size: {width, height}`, `image_size_enum` → `image_size` as the provider's
  named preset (e.g. fal's "landscape_16_9").
- `reference_images`: `"list"` (the default for images) or `"first"` (the default for
  video), sent under the `reference_images` field or the provider's default for the
  category.
- `input`: fixed upstream fields merged last (they win), e.g. `enable_safety_checker`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vivix.providers.base import ProviderFatalError, RenderRequest

WIDTH_HEIGHT = "width_height"
IMAGE_SIZE = "image_size"
IMAGE_SIZE_ENUM = "image_size_enum"
REFERENCE_MODES = ("list", "first")

ASPECT_RATIOS = {"1:1": (1, 1), "4:5": (4, 5), "9:16": (9, 16), "16:9": (16, 9)}
IMAGE_LONG_SIDE = {"1K": 1024, "2K": 2048, "4K": 4096}
VIDEO_SHORT_SIDE = {"720p": 720, "1080p": 1080, "2160p": 2160}


# Our params as most per-model input schemas (fal's, Replicate's) name them; providers
# add the rest (the number of results is `num_images` on one, `num_outputs` on the other).
USUAL_FIELDS: Mapping[str, str] = {
    "prompt": "prompt",
    "negative_prompt": "negative_prompt",
    "aspect_ratio": "aspect_ratio",
    "resolution": "resolution",
    "duration": "duration",
    "audio": "generate_audio",
    "seed": "seed",
}


@dataclass(frozen=True, slots=True)
class InputConventions:
    """What one provider's model schemas usually call our params; a route's options
    override it per model."""

    provider: str  # as misconfiguration errors name it
    fields: Mapping[str, str]  # our param → upstream field
    reference_fields: Mapping[str, str]  # category → the field reference images go in
    size_modes: frozenset[str]  # the `size` option values the provider's inputs support
    # aspect ratio → named size, for `image_size_enum` ("1:1"'s is the fallback)
    size_presets: Mapping[str, str] = field(default_factory=dict)


def build_input(request: RenderRequest, conventions: InputConventions) -> dict[str, Any]:
    """The upstream input for one render, from our params and the route's options (see
    the module docstring)."""
    options = request.options
    params = request.params
    fields = {**conventions.fields, **option_table(options, "fields")}
    values = option_table(options, "values")
    body: dict[str, Any] = {}
    consumed: set[str] = set()

    size_mode = options.get("size")
    if size_mode is not None:
        if size_mode not in conventions.size_modes:
            raise ProviderFatalError(
                f"{conventions.provider} route option size={size_mode!r} is not one of "
                f"{sorted(conventions.size_modes)}"
            )
        consumed |= {"aspect_ratio", "resolution"}
        body.update(_size_fields(size_mode, request, conventions.size_presets))

    references = reference_urls(request)
    if references:
        consumed.add("reference_images")
        target = fields.get("reference_images", conventions.reference_fields.get(request.category))
        mode = options.get("reference_images", "first" if request.category == "video" else "list")
        if mode not in REFERENCE_MODES:
            raise ProviderFatalError(
                f"{conventions.provider} route option reference_images={mode!r} is not list|first"
            )
        if target:
            body[target] = references if mode == "list" else references[0]

    for name, value in params.items():
        target = fields.get(name)
        if name in consumed or not target or value is None:
            continue
        mapped = values.get(name)
        if isinstance(mapped, dict) and _value_key(value) in mapped:
            value = mapped[_value_key(value)]
        body[str(target)] = value

    body.update(option_table(options, "input"))
    return body


def _size_fields(mode: str, request: RenderRequest, presets: Mapping[str, str]) -> dict[str, Any]:
    default_aspect = "16:9" if request.category == "video" else "1:1"
    aspect = str(request.params.get("aspect_ratio") or default_aspect)
    if mode == IMAGE_SIZE_ENUM:
        return {"image_size": presets.get(aspect, presets.get("1:1"))}
    width, height = pixel_size(request.category, aspect, request.params.get("resolution"))
    if mode == IMAGE_SIZE:
        return {"image_size": {"width": width, "height": height}}
    return {"width": width, "height": height}


def pixel_size(category: str, aspect: str, resolution: Any) -> tuple[int, int]:
    """Pixel dimensions for our aspect ratio and resolution: images by their long side
    (1K = 1024), video by its short side (720p = 720); multiples of 8."""
    ratio_w, ratio_h = ASPECT_RATIOS.get(aspect, (1, 1))
    if category == "video":
        short = VIDEO_SHORT_SIDE.get(str(resolution), 720)
        long_side = short * max(ratio_w, ratio_h) / min(ratio_w, ratio_h)
        sides = (long_side, short) if ratio_w >= ratio_h else (short, long_side)
    else:
        long_edge = IMAGE_LONG_SIDE.get(str(resolution), 1024)
        short_side = long_edge * min(ratio_w, ratio_h) / max(ratio_w, ratio_h)
        sides = (long_edge, short_side) if ratio_w >= ratio_h else (short_side, long_edge)
    width, height = (max(8, round(side / 8) * 8) for side in sides)
    return width, height


def reference_urls(request: RenderRequest) -> list[str]:
    urls = request.params.get("reference_images") or [ref.url for ref in request.reference_images]
    return [str(url) for url in urls]


def _value_key(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# -- reading one option --------------------------------------------------------------------


def option_table(options: dict[str, Any], key: str) -> dict[str, Any]:
    value = options.get(key, {})
    if not isinstance(value, dict):
        raise ProviderFatalError(f"route option {key} must be a table")
    return dict(value)


def option_choice(options: dict[str, Any], key: str, allowed: tuple[str, ...], default: str) -> str:
    value = options.get(key, default)
    if value not in allowed:
        raise ProviderFatalError(f"route option {key} must be one of {', '.join(allowed)}")
    return str(value)


def option_string_map(options: dict[str, Any], key: str) -> dict[str, str]:
    value = options.get(key, {})
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ProviderFatalError(f"route option {key} must map strings to strings")
    return dict(value)


def option_string_list(options: dict[str, Any], key: str) -> tuple[str, ...]:
    value = options.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProviderFatalError(f"route option {key} must be a list of param names")
    return tuple(value)
