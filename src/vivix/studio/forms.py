"""The Generate form, derived from a model's params schema (the catalog's descriptors are
the single source of truth): which control each param gets, and how the posted form
becomes the same JSON body the API accepts. Validation itself is the API's
(`catalog.params.validate_params`), so the Studio can never accept what the API refuses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starlette.datastructures import FormData, ImmutableMultiDict

from vivix.catalog.schemas import ModelSpec, ParamSpec
from vivix.kit.errors import InvalidParams

# Shown in this order; params a model adds beyond these follow, then the advanced ones.
_ORDER = (
    "prompt",
    "aspect_ratio",
    "resolution",
    "duration",
    "number_results",
    "audio",
    "output_format",
    "reference_images",
    "negative_prompt",
    "seed",
)
_ADVANCED = frozenset({"negative_prompt", "seed", "reference_images", "output_format"})
_LABELS = {
    "prompt": "Prompt",
    "negative_prompt": "Negative prompt",
    "aspect_ratio": "Aspect ratio",
    "resolution": "Resolution",
    "duration": "Duration",
    "number_results": "Results",
    "audio": "Soundtrack",
    "seed": "Seed",
    "reference_images": "Reference images",
    "output_format": "File format",
}
_HINTS = {
    "negative_prompt": "What to keep out of the result.",
    "seed": "Leave empty for a random seed; the same seed and settings give the same result.",
    "reference_images": "Public http(s) image URLs the model should follow.",
    "number_results": "Each result is charged.",
    "audio": "Add a generated audio track.",
}
SEGMENTED_MAX = 5  # enums with at most this many values are buttons, longer ones a list


@dataclass(frozen=True, slots=True)
class FieldView:
    name: str
    label: str
    control: str  # textarea | segmented | select | number | toggle | urls
    value: Any
    spec: ParamSpec
    hint: str | None = None
    error: str | None = None
    options: list[str] = field(default_factory=list)
    advanced: bool = False
    unit: str | None = None


def field_views(spec: ModelSpec, values: dict[str, Any], errors: dict[str, str]) -> list[FieldView]:
    names = [n for n in _ORDER if n in spec.params]
    names += [n for n in spec.params if n not in _ORDER]
    out = []
    for name in names:
        param = spec.params[name]
        value = values.get(name, param.default)
        if param.type == "enum" and value not in (param.values or []):
            value = param.default  # carried over from another model that allows other values
        out.append(
            FieldView(
                name=name,
                label=_LABELS.get(name, name.replace("_", " ").capitalize()),
                control=_control(name, param),
                value=_shown_value(param, value),
                spec=param,
                hint=_HINTS.get(name),
                error=errors.get(name),
                options=list(param.values or []),
                advanced=name in _ADVANCED,
                unit="seconds" if name == "duration" else None,
            )
        )
    # Basic controls first, advanced ones together in a disclosure at the end.
    return [f for f in out if not f.advanced] + [f for f in out if f.advanced]


def _control(name: str, param: ParamSpec) -> str:
    if param.type == "string":
        return "textarea"
    if param.type == "enum":
        return "segmented" if len(param.values or []) <= SEGMENTED_MAX else "select"
    if param.type == "boolean":
        return "toggle"
    if param.type == "string[]":
        return "urls"
    if name == "number_results" and (param.max or 0) - (param.min or 0) <= SEGMENTED_MAX:
        return "segmented"
    return "number"


def _shown_value(param: ParamSpec, value: Any) -> Any:
    if param.type == "string[]":
        items = [str(v) for v in value] if isinstance(value, list) else []
        return items + [""] * max(0, (param.max_items or 1) - len(items))
    if value is None:
        return ""
    return value


def segmented_options(view: FieldView) -> list[str]:
    """The choices of a segmented control: enum values, or each allowed integer."""
    if view.spec.type == "enum":
        return view.options
    return [str(n) for n in range(view.spec.min or 0, (view.spec.max or 0) + 1)]


def body_from_form(
    spec: ModelSpec, form: FormData | ImmutableMultiDict[str, Any]
) -> dict[str, Any]:
    """The API request body for this form: typed values for the model's params (the API's
    own validation then checks ranges and choices). Empty optional fields are left out so
    the model's defaults apply; an unchecked toggle is `false`."""
    body: dict[str, Any] = {"model": spec.slug}
    for name, param in spec.params.items():
        if param.type == "boolean":
            body[name] = form.get(name) in ("true", "on", "1")
            continue
        if param.type == "string[]":
            items = [str(v).strip() for v in form.getlist(name) if str(v).strip()]
            if items:
                body[name] = items
            continue
        raw = form.get(name)
        if raw is None:
            continue
        text = str(raw)
        if param.type == "integer":
            text = text.strip()
            if not text:
                continue
            try:
                body[name] = int(text)
            except ValueError:
                raise InvalidParams(name, "must be a whole number") from None
            continue
        if not text.strip() and not param.required:
            continue
        body[name] = text
    return body


def values_from_form(
    spec: ModelSpec, form: FormData | ImmutableMultiDict[str, Any]
) -> dict[str, Any]:
    """What the user typed, to show the form again (after an error, or a model change)."""
    values: dict[str, Any] = {}
    for name, param in spec.params.items():
        if param.type == "boolean":
            values[name] = form.get(name) in ("true", "on", "1")
        elif param.type == "string[]":
            values[name] = [str(v) for v in form.getlist(name) if str(v).strip()]
        elif form.get(name) is not None:
            values[name] = str(form.get(name))
    return values
