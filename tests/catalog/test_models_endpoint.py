"""GET /api/v1/models (API.md §3): the catalog as one key sees it — tier, wallet, limits and
only the allowlisted models, each with compact params, a JSON Schema that agrees with the
server's validation, its credit band and an example request the server accepts."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from tests.factories import AccountWithKey, account_with_key
from vivix.admin import service as admin
from vivix.runtime import Runtime

DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"
MODEL_FIELDS = {
    "slug",
    "name",
    "category",
    "creator",
    "description",
    "params",
    "params_schema",
    "credits_band",
    "example_request",
    "available",
    "unavailable_reason",
}
COMPACT_KEYS = {"type", "required", "max_length", "values", "default", "min", "max", "max_items"}
COMPACT_TYPES = {"string", "integer", "enum", "boolean", "string[]"}
SCHEMA_KEYWORDS = {
    "$schema",
    "title",
    "type",
    "properties",
    "required",
    "additionalProperties",
    "const",
    "enum",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "items",
    "maxItems",
    "format",
    "pattern",
    "default",
    "maxProperties",
    "propertyNames",
}
JSON_TYPES = {"object", "string", "integer", "boolean", "array"}


async def models_of(client: httpx.AsyncClient, acct: AccountWithKey) -> dict[str, Any]:
    response = await client.get("/api/v1/models", headers=acct.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def by_slug(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["slug"]: m for m in body["models"]}


# A small JSON Schema checker for the keywords the schemas use (jsonschema isn't a
# dependency): enough to tell whether a body satisfies a model's params_schema.
def schema_errors(schema: dict[str, Any], value: Any, path: str = "$") -> list[str]:
    errors: list[str] = []
    kind = schema.get("type")
    type_ok = {
        "object": isinstance(value, dict),
        "string": isinstance(value, str),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
        "array": isinstance(value, list),
        None: True,
    }[kind]
    if not type_ok:
        return [f"{path}: not {kind}"]
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: not {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: not in enum")
    if kind == "integer":
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: below minimum")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: above maximum")
    if kind == "string":
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{path}: too short")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{path}: too long")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: pattern")
    if kind == "array":
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{path}: too many items")
        for index, item in enumerate(value):
            errors += schema_errors(schema.get("items", {}), item, f"{path}[{index}]")
    if kind == "object":
        properties = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                errors.append(f"{path}.{name}: required")
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            errors.append(f"{path}: too many properties")
        for name, item in value.items():
            names = schema.get("propertyNames", {})
            if "maxLength" in names and len(name) > names["maxLength"]:
                errors.append(f"{path}.{name}: name too long")
            if name in properties:
                errors += schema_errors(properties[name], item, f"{path}.{name}")
            elif schema.get("additionalProperties") is False:
                errors.append(f"{path}.{name}: not allowed")
            elif isinstance(schema.get("additionalProperties"), dict):
                errors += schema_errors(schema["additionalProperties"], item, f"{path}.{name}")
    return errors


def unknown_keywords(schema: Any) -> set[str]:
    """Keywords used anywhere in `schema` that this suite doesn't know as draft 2020-12."""
    if not isinstance(schema, dict):
        return set()
    found = set(schema) - SCHEMA_KEYWORDS
    for name, sub in schema.get("properties", {}).items():
        del name
        found |= unknown_keywords(sub)
    for key in ("items", "propertyNames"):
        found |= unknown_keywords(schema.get(key))
    if isinstance(schema.get("additionalProperties"), dict):
        found |= unknown_keywords(schema["additionalProperties"])
    return found


# -- the envelope ----------------------------------------------------------------------------


async def test_models_shows_tier_wallet_limits_and_the_allowlisted_models(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime, credits=1234, calls_per_minute=77)
    response = await client.get("/api/v1/models", headers=acct.headers)
    body = response.json()
    assert set(body) == {"tier", "credits_balance", "rate_limit", "models"}
    assert body["tier"] == "pro"
    assert body["credits_balance"] == 1234
    assert response.headers["x-credits-balance"] == "1234"
    assert body["rate_limit"] == {"calls_per_minute": 77, "concurrent_jobs": 5}
    shown = await admin.show_account(runtime, acct.name)
    assert sorted(m["slug"] for m in body["models"]) == sorted(shown["allowed_models"])
    assert {"vivix-local-image", "grok-imagine-image-quality", "wan-2.7-text-to-video"} <= set(
        by_slug(body)
    )


async def test_only_allowlisted_models_are_listed(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime)
    await admin.set_models(
        runtime, acct.name, ["grok-imagine-image-quality", "vivix-local-audio"], allow=False
    )
    slugs = set(by_slug(await models_of(client, acct)))
    assert "grok-imagine-image-quality" not in slugs
    assert "vivix-local-audio" not in slugs
    assert "vivix-local-image" in slugs
    shown = await admin.show_account(runtime, acct.name)
    await admin.set_models(runtime, acct.name, shown["allowed_models"], allow=False)
    assert (await models_of(client, acct))["models"] == []


async def test_ultimate_tier_and_test_keys_see_the_same_shape(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime, tier="ultimate", test_key=True)
    body = await models_of(client, acct)
    assert body["tier"] == "ultimate"
    assert body["rate_limit"] == {"calls_per_minute": 600, "concurrent_jobs": 20}
    assert body["models"]


# -- each model ------------------------------------------------------------------------------


async def test_every_model_has_the_documented_fields(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime)
    for model in (await models_of(client, acct))["models"]:
        assert set(model) == MODEL_FIELDS, model["slug"]
        assert model["category"] in {"image", "video", "audio"}
        for field in ("slug", "name", "creator", "description"):
            assert isinstance(model[field], str)
            assert model[field]
        assert model["params"]["prompt"] == {"type": "string", "required": True, "max_length": 2000}
        band = model["credits_band"]
        assert set(band) == {"min", "max"}
        assert 0 <= band["min"] <= band["max"]
        assert model["example_request"]["model"] == model["slug"]


async def test_compact_descriptors_use_only_the_documented_vocabulary(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime)
    for model in (await models_of(client, acct))["models"]:
        for name, descriptor in model["params"].items():
            where = f"{model['slug']}.{name}"
            assert set(descriptor) <= COMPACT_KEYS, where
            assert descriptor["type"] in COMPACT_TYPES, where
            if descriptor["type"] == "enum":
                assert descriptor["values"], where
                if "default" in descriptor:
                    assert descriptor["default"] in descriptor["values"], where
            if descriptor["type"] == "integer":
                assert descriptor["min"] <= descriptor["max"], where
            if descriptor.get("required"):
                assert "default" not in descriptor, where


async def test_grok_and_wan_descriptors_and_bands_are_as_documented(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime)
    models = by_slug(await models_of(client, acct))
    grok = models["grok-imagine-image-quality"]
    assert grok["category"] == "image"
    assert grok["creator"] == "xAI"
    assert grok["params"] == {
        "prompt": {"type": "string", "required": True, "max_length": 2000},
        "aspect_ratio": {
            "type": "enum",
            "values": ["1:1", "4:5", "9:16", "16:9"],
            "default": "1:1",
        },
        "resolution": {"type": "enum", "values": ["1K", "2K", "4K"], "default": "2K"},
        "number_results": {"type": "integer", "min": 1, "max": 4, "default": 1},
    }
    assert grok["credits_band"] == {"min": 80, "max": 211}

    wan = models["wan-2.7-text-to-video"]
    assert wan["category"] == "video"
    assert wan["params"] == {
        "prompt": {"type": "string", "required": True, "max_length": 2000},
        "duration": {"type": "integer", "min": 2, "max": 10, "default": 5},
        "resolution": {"type": "enum", "values": ["720p", "1080p"], "default": "1080p"},
        "audio": {"type": "boolean", "default": False},
    }
    # 720p silent at 2 s = 320 + 40×2; 1080p with audio at 10 s = 540 + 90×10.
    assert wan["credits_band"] == {"min": 400, "max": 1440}

    seedream = models["seedream-4"]
    assert seedream["params"]["reference_images"] == {"type": "string[]", "max_items": 3}
    assert seedream["params"]["seed"] == {"type": "integer", "min": 0, "max": 2**32 - 1}


async def test_params_schema_is_draft_2020_12_and_mirrors_the_descriptors(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime)
    for model in (await models_of(client, acct))["models"]:
        schema = model["params_schema"]
        slug = model["slug"]
        assert schema["$schema"] == DRAFT_2020_12
        assert schema["type"] == "object"
        assert schema["additionalProperties"] is False
        assert unknown_keywords(schema) == set(), slug
        properties = schema["properties"]
        assert properties["model"] == {"type": "string", "const": slug}
        assert set(properties) == set(model["params"]) | {"model", "metadata"}
        assert set(schema["required"]) == {"model"} | {
            name for name, d in model["params"].items() if d.get("required")
        }
        for name, descriptor in model["params"].items():
            prop = properties[name]
            assert prop["type"] in JSON_TYPES
            expected_type = {
                "string": "string",
                "integer": "integer",
                "enum": "string",
                "boolean": "boolean",
                "string[]": "array",
            }[descriptor["type"]]
            assert prop["type"] == expected_type, (slug, name)
            if descriptor["type"] == "enum":
                assert prop["enum"] == descriptor["values"]
            if descriptor["type"] == "integer":
                assert (prop["minimum"], prop["maximum"]) == (descriptor["min"], descriptor["max"])
            if "max_length" in descriptor:
                assert prop["maxLength"] == descriptor["max_length"]
            if "max_items" in descriptor:
                assert prop["maxItems"] == descriptor["max_items"]
            assert prop.get("default") == descriptor.get("default"), (slug, name)
        metadata = properties["metadata"]
        assert metadata["type"] == "object"
        assert metadata["maxProperties"] == 16


# -- examples and schemas agree with the server ---------------------------------------------


async def test_every_example_request_is_valid_and_accepted(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    live = await account_with_key(runtime, calls_per_minute=10_000, concurrent_jobs=1000)
    sandbox = await account_with_key(runtime, test_key=True, concurrent_jobs=1000)
    models = (await models_of(client, live))["models"]
    assert len(models) >= 6
    for model in models:
        example = model["example_request"]
        assert schema_errors(model["params_schema"], example) == [], model["slug"]
        response = await client.post("/api/v1/generate", json=example, headers=live.headers)
        # Accepted; models whose providers have no credentials here are down, not invalid.
        assert response.status_code in (201, 503), (model["slug"], response.text)
        if response.status_code == 503:
            assert response.json()["error"] == "PROVIDER_DOWN"
            assert not model["slug"].startswith("vivix-local-")
        else:
            estimate = response.json()["credits_estimate"]
            assert model["credits_band"]["min"] <= estimate
        # A test key renders every model locally: the example must be accepted outright.
        rendered = await client.post("/api/v1/generate", json=example, headers=sandbox.headers)
        assert rendered.status_code == 201, (model["slug"], rendered.text)


@pytest.mark.parametrize(
    ("slug", "changes"),
    [
        ("grok-imagine-image-quality", {}),
        ("grok-imagine-image-quality", {"number_results": 5}),
        ("grok-imagine-image-quality", {"resolution": "720p"}),
        ("grok-imagine-image-quality", {"seed": 1}),
        ("grok-imagine-image-quality", {"prompt": "p" * 2001}),
        ("wan-2.7-text-to-video", {"duration": 10, "audio": True}),
        ("wan-2.7-text-to-video", {"duration": 11}),
        ("wan-2.7-text-to-video", {"audio": "yes"}),
        ("seedream-4", {"reference_images": ["https://93.184.215.14/a.png"] * 3}),
        ("seedream-4", {"reference_images": ["https://93.184.215.14/a.png"] * 4}),
        ("seedream-4", {"reference_images": ["ftp://93.184.215.14/a.png"]}),
        ("seedream-4", {"seed": -1}),
        ("vivix-local-image", {"metadata": {f"k{i}": "v" for i in range(17)}}),
        ("vivix-local-image", {"metadata": {"k": 1}}),
        ("vivix-local-video", {"duration": 0}),
    ],
)
async def test_the_schema_and_the_server_agree_on_a_body(
    runtime: Runtime, client: httpx.AsyncClient, slug: str, changes: dict[str, Any]
) -> None:
    acct = await account_with_key(runtime, test_key=True)
    model = by_slug(await models_of(client, acct))[slug]
    body = {**model["example_request"], **changes}
    schema_says_valid = schema_errors(model["params_schema"], body) == []
    response = await client.post("/api/v1/generate", json=body, headers=acct.headers)
    assert response.status_code in (201, 422), response.text
    assert (response.status_code == 201) == schema_says_valid, (schema_says_valid, response.text)
