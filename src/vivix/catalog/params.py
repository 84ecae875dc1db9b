"""Validation of request params against a model's descriptors, and the JSON Schema and
compact descriptors derived from them. The descriptors are the single source of truth."""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import urlsplit

from vivix.catalog.schemas import ModelSpec, ParamSpec
from vivix.kit.errors import InvalidParams

# Keys of the request body that are not model params.
ENVELOPE_KEYS = ("model", "metadata")
# Dropped silently when the model doesn't take it (public contract).
DROPPED_WHEN_UNSUPPORTED = ("negative_prompt",)
NEGATIVE_PROMPT_MAX = 500
METADATA_MAX_KEYS = 16
METADATA_KEY_MAX = 64
METADATA_VALUE_MAX = 512
URL_MAX_LENGTH = 2048

_COMPACT_KEYS = ("type", "required", "max_length", "values", "default", "min", "max", "max_items")


def compact_descriptor(spec: ParamSpec) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in _COMPACT_KEYS:
        value = getattr(spec, key)
        if key == "required" and not value:
            continue
        if value is not None:
            out[key] = value
    return out


def json_schema(model: ModelSpec) -> dict[str, Any]:
    properties: dict[str, Any] = {"model": {"type": "string", "const": model.slug}}
    required = ["model"]
    for name, spec in model.params.items():
        properties[name] = _property_schema(spec)
        if spec.required:
            required.append(name)
    properties["metadata"] = {
        "type": "object",
        "maxProperties": METADATA_MAX_KEYS,
        "propertyNames": {"maxLength": METADATA_KEY_MAX},
        "additionalProperties": {"type": "string", "maxLength": METADATA_VALUE_MAX},
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": model.name,
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def _property_schema(spec: ParamSpec) -> dict[str, Any]:
    schema: dict[str, Any]
    if spec.type == "string":
        schema = {"type": "string"}
        if spec.max_length is not None:
            schema["maxLength"] = spec.max_length
        schema["minLength"] = (
            spec.min_length if spec.min_length is not None else (1 if spec.required else 0)
        )
    elif spec.type == "integer":
        schema = {"type": "integer", "minimum": spec.min, "maximum": spec.max}
    elif spec.type == "enum":
        schema = {"type": "string", "enum": list(spec.values or [])}
    elif spec.type == "boolean":
        schema = {"type": "boolean"}
    else:
        item: dict[str, Any] = {"type": "string"}
        if spec.format == "http_url":
            item.update({"format": "uri", "pattern": "^https?://", "maxLength": URL_MAX_LENGTH})
        elif spec.item_max_length is not None:
            item["maxLength"] = spec.item_max_length
        schema = {"type": "array", "items": item}
        if spec.max_items is not None:
            schema["maxItems"] = spec.max_items
    if spec.default is not None:
        schema["default"] = spec.default
    return schema


def validate_params(model: ModelSpec, body: dict[str, Any]) -> dict[str, Any]:
    """Return the validated params with defaults applied, or raise InvalidParams naming the
    first bad field. Fields are checked in the body's order, then missing required ones."""
    params: dict[str, Any] = {}
    for name, value in body.items():
        if name in ENVELOPE_KEYS:
            continue
        spec = model.params.get(name)
        if spec is None:
            if name in DROPPED_WHEN_UNSUPPORTED:
                _check_string(name, value, ParamSpec(type="string", max_length=NEGATIVE_PROMPT_MAX))
                continue
            raise InvalidParams(name, f"`{name}` is not a param of {model.slug}")
        if value is None and not spec.required:
            continue  # explicit null = use the default
        params[name] = _check_value(name, value, spec)
    for name, spec in model.params.items():
        if name in params:
            continue
        if spec.required:
            raise InvalidParams(name, "is required")
        if spec.default is not None:
            params[name] = spec.default
    return params


def _check_value(name: str, value: Any, spec: ParamSpec) -> Any:
    if spec.type == "string":
        return _check_string(name, value, spec)
    if spec.type == "integer":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidParams(name, "must be an integer")
        if isinstance(value, float):
            if not math.isfinite(value) or not value.is_integer():
                raise InvalidParams(name, "must be a whole number")
            value = int(value)
        if not (spec.min or 0) <= value <= (spec.max or 0):
            raise InvalidParams(name, f"must be between {spec.min} and {spec.max}")
        return value
    if spec.type == "enum":
        if not isinstance(value, str) or value not in (spec.values or []):
            allowed = ", ".join(spec.values or [])
            raise InvalidParams(name, f"must be one of: {allowed}")
        return value
    if spec.type == "boolean":
        if not isinstance(value, bool):
            raise InvalidParams(name, "must be true or false")
        return value
    return _check_string_list(name, value, spec)


def _check_string(name: str, value: Any, spec: ParamSpec) -> str:
    if not isinstance(value, str):
        raise InvalidParams(name, "must be a string")
    if "\x00" in value:
        raise InvalidParams(name, "must not contain NUL characters")
    text = value.strip()
    minimum = spec.min_length if spec.min_length is not None else (1 if spec.required else 0)
    if len(text) < minimum:
        raise InvalidParams(
            name, "must not be empty" if minimum == 1 else f"needs at least {minimum} characters"
        )
    if spec.max_length is not None and len(text) > spec.max_length:
        raise InvalidParams(name, f"is {len(text)} characters; the maximum is {spec.max_length}")
    return text


def _check_string_list(name: str, value: Any, spec: ParamSpec) -> list[str]:
    if not isinstance(value, list):
        raise InvalidParams(name, "must be an array of strings")
    if spec.max_items is not None and len(value) > spec.max_items:
        raise InvalidParams(name, f"has {len(value)} items; the maximum is {spec.max_items}")
    items: list[str] = []
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise InvalidParams(name, f"item {index} must be a string")
        if "\x00" in item:
            raise InvalidParams(name, f"item {index} must not contain NUL characters")
        if spec.format == "http_url":
            reason = http_url_problem(item)
            if reason:
                raise InvalidParams(name, f"item {index} {reason}")
        elif spec.item_max_length is not None and len(item) > spec.item_max_length:
            raise InvalidParams(
                name, f"item {index} is longer than {spec.item_max_length} characters"
            )
        items.append(item)
    return items


def http_url_problem(url: str) -> str | None:
    """Why `url` is not an absolute http(s) URL with a host, or None when it is."""
    if len(url) > URL_MAX_LENGTH:
        return f"is longer than {URL_MAX_LENGTH} characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "is not a valid URL"
    del port
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not parts.hostname:
        return "must name a host"
    if any(c.isspace() or not c.isprintable() for c in url):
        return "must not contain whitespace or control characters"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials"
    return None


def validate_metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidParams("metadata", "must be an object of string keys and string values")
    if len(value) > METADATA_MAX_KEYS:
        raise InvalidParams(
            "metadata", f"has {len(value)} keys; the maximum is {METADATA_MAX_KEYS}"
        )
    for key, item in value.items():
        if not key or len(key) > METADATA_KEY_MAX:
            raise InvalidParams("metadata", f"keys must be 1 to {METADATA_KEY_MAX} characters")
        if not isinstance(item, str):
            raise InvalidParams("metadata", f"value of `{key}` must be a string")
        # Stored as JSON text/JSONB: PostgreSQL can't hold NUL (and it is never meaningful).
        if "\x00" in key or "\x00" in item:
            raise InvalidParams("metadata", "keys and values must not contain NUL characters")
        if len(item) > METADATA_VALUE_MAX:
            raise InvalidParams(
                "metadata", f"value of `{key}` is longer than {METADATA_VALUE_MAX} characters"
            )
    return dict(value)
