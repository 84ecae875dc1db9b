"""An operator's catalog file (VIVIX_CATALOG_PATH): extends the shipped catalog (a new slug
adds a model, a known slug replaces it) or, with mode = "replace", replaces it; a broken
file stops start-up with a CatalogError that says what is wrong and where."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.factories import account_with_key
from vivix.catalog.repository import CatalogError
from vivix.catalog.service import Catalog
from vivix.runtime import Runtime, build_runtime
from vivix.settings import load_settings

SKETCH = """
[[models]]
slug = "acme-sketch"
name = "ACME Sketch"
category = "image"
creator = "ACME"
description = "Pencil sketches, rendered by the local renderer in this test."
example_request = { model = "acme-sketch", prompt = "a pencil sketch of a heron", style = "bold" }
[models.params]
prompt = { type = "string", required = true, max_length = 300 }
style = { type = "enum", values = ["fine", "bold"], default = "fine" }
[[models.pricing]]
when = { style = "fine" }
credits = 7
[[models.pricing]]
when = { style = "bold" }
credits = 9
[[models.routes]]
provider = "local"
upstream_model = "image"
"""

CHEAP_AUDIO = """
[[models]]
slug = "vivix-local-audio"
name = "Local Audio (operator's price)"
category = "audio"
creator = "Vivix"
description = "The shipped local audio model at a flat operator price."
[models.params]
prompt = { type = "string", required = true, max_length = 2000 }
duration = { type = "integer", min = 1, max = 5, default = 2 }
[[models.pricing]]
credits = 3
[[models.routes]]
provider = "local"
upstream_model = "audio"
"""


def write(tmp_path: Path, text: str, name: str = "catalog.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, "utf-8")
    return path


def load_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(CatalogError) as caught:
        Catalog.load(write(tmp_path, text))
    return str(caught.value)


def test_an_extending_file_adds_and_replaces_models(tmp_path: Path) -> None:
    shipped = {m.slug for m in Catalog.load().all()}
    catalog = Catalog.load(write(tmp_path, SKETCH + CHEAP_AUDIO))
    assert {m.slug for m in catalog.all()} == shipped | {"acme-sketch"}
    sketch = catalog.get("acme-sketch")
    assert sketch is not None
    assert sketch.compact_params["style"] == {
        "type": "enum",
        "values": ["fine", "bold"],
        "default": "fine",
    }
    audio = catalog.get("vivix-local-audio")
    assert audio is not None
    assert audio.spec.name == "Local Audio (operator's price)"
    assert audio.compact_params["duration"]["max"] == 5
    band = catalog.describe(audio, None).credits_band
    assert (band.min, band.max) == (3, 3)
    # A model given without an example gets a minimal valid one.
    assert audio.example_request["model"] == "vivix-local-audio"
    assert audio.example_request["prompt"]
    assert "acme-sketch" in catalog.default_allowlist("pro")
    assert "acme-sketch" not in catalog.default_allowlist("free")


def test_a_replacing_file_is_the_whole_catalog(tmp_path: Path) -> None:
    catalog = Catalog.load(write(tmp_path, 'mode = "replace"\n' + SKETCH))
    assert [m.slug for m in catalog.all()] == ["acme-sketch"]
    assert catalog.get("grok-imagine-image-quality") is None


def test_a_json_catalog_file_is_read_too(tmp_path: Path) -> None:
    document = {
        "mode": "replace",
        "models": [
            {
                "slug": "json-model",
                "name": "From JSON",
                "category": "audio",
                "creator": "Ops",
                "description": "d",
                "params": {"prompt": {"type": "string", "required": True}},
                "pricing": [{"credits": 2}],
                "routes": [{"provider": "local", "upstream_model": "audio"}],
            }
        ],
    }
    catalog = Catalog.load(write(tmp_path, json.dumps(document), "catalog.json"))
    assert [m.slug for m in catalog.all()] == ["json-model"]


def test_the_path_comes_from_vivix_catalog_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, SKETCH)
    monkeypatch.setenv("VIVIX_CATALOG_PATH", str(path))
    settings = load_settings(data_dir=tmp_path, secret_key="s")
    assert settings.catalog_path == path
    assert Catalog.load(settings.catalog_path).get("acme-sketch") is not None


# -- served -------------------------------------------------------------------------------


@pytest.fixture
def settings_overrides(tmp_path: Path) -> dict[str, object]:
    return {"catalog_path": write(tmp_path, SKETCH + CHEAP_AUDIO, "operator.toml")}


async def test_operator_models_are_listed_and_served(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime)
    models = {
        m["slug"]: m
        for m in (await client.get("/api/v1/models", headers=acct.headers)).json()["models"]
    }
    sketch = models["acme-sketch"]
    assert sketch["credits_band"] == {"min": 7, "max": 9}
    assert sketch["params_schema"]["properties"]["style"]["enum"] == ["fine", "bold"]
    response = await client.post(
        "/api/v1/generate", json=sketch["example_request"], headers=acct.headers
    )
    assert response.status_code == 201, response.text
    assert response.json()["credits_estimate"] == 9
    assert models["vivix-local-audio"]["credits_band"] == {"min": 3, "max": 3}
    too_long = {"model": "vivix-local-audio", "prompt": "rain", "duration": 6}
    refused = await client.post("/api/v1/generate", json=too_long, headers=acct.headers)
    assert refused.json()["field"] == "duration"


# -- broken files --------------------------------------------------------------------------


def test_unknown_provider_is_named(tmp_path: Path) -> None:
    message = load_error(tmp_path, SKETCH.replace('provider = "local"', 'provider = "acme-cloud"'))
    assert "acme-sketch" in message
    assert "unknown provider 'acme-cloud'" in message
    assert "local" in message  # lists the known ones


def test_incomplete_pricing_names_the_unpriced_combination(tmp_path: Path) -> None:
    broken = SKETCH.replace(
        'when = { style = "bold" }\ncredits = 9\n', 'when = { style = "fine" }\ncredits = 9\n'
    )
    message = load_error(tmp_path, broken)
    assert "acme-sketch" in message
    assert "no pricing row matches style=bold" in message


def test_pricing_on_an_undeclared_param_is_refused(tmp_path: Path) -> None:
    message = load_error(
        tmp_path, SKETCH.replace('when = { style = "fine" }', 'when = { size = "S" }')
    )
    assert "unknown param `size`" in message


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    message = load_error(tmp_path, SKETCH + "\n[[models]\nslug = ")
    assert "catalog.toml" in message
    assert "invalid TOML" in message


def test_bad_json_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match=r"catalog\.json: invalid JSON"):
        Catalog.load(write(tmp_path, "{", "catalog.json"))


def test_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read catalog file"):
        Catalog.load(tmp_path / "nowhere.toml")


@pytest.mark.parametrize(
    ("example", "problem"),
    [
        ('{ model = "acme-sketch", prompt = "x", style = "loud" }', "style"),
        ('{ model = "acme-sketch", prompt = "x", colour = "red" }', "colour"),
        ('{ model = "acme-sketch" }', "prompt"),
        ('{ model = "vivix-local-image", prompt = "x" }', "model"),
        ('{ prompt = "x" }', "model"),
        ('{ model = "acme-sketch", prompt = "x", metadata = { k = 1 } }', "metadata"),
    ],
)
def test_invalid_example_request_is_refused(tmp_path: Path, example: str, problem: str) -> None:
    broken = SKETCH.replace(
        'example_request = { model = "acme-sketch", prompt = "a pencil sketch of a heron", style = "bold" }',
        f"example_request = {example}",
    )
    message = load_error(tmp_path, broken)
    assert "acme-sketch: example_request is invalid" in message
    assert problem in message


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (('prompt = { type = "string", required = true, max_length = 300 }\n', ""), "prompt"),
        (('category = "image"', 'category = "hologram"'), "category"),
        (('slug = "acme-sketch"', 'slug = "ACME Sketch!"'), "slug"),
        (("credits = 7", "credits = -7"), "credits"),
        (
            ('values = ["fine", "bold"], default = "fine"', 'values = ["fine"], default = "bold"'),
            "default",
        ),
        (("[models.params]", "surprise = true\n[models.params]"), "surprise"),
        (('provider = "local"\nupstream_model = "image"\n', ""), "route"),
    ],
)
def test_malformed_model_is_refused_with_the_reason(
    tmp_path: Path, change: tuple[str, str], problem: str
) -> None:
    old, new = change
    assert old in SKETCH
    message = load_error(tmp_path, SKETCH.replace(old, new))
    assert "catalog.toml" in message or "acme-sketch" in message
    assert problem in message


async def test_a_broken_catalog_stops_start_up(tmp_path: Path) -> None:
    path = write(tmp_path, SKETCH.replace('provider = "local"', 'provider = "nowhere"'))
    settings = load_settings(data_dir=tmp_path, secret_key="s", catalog_path=path)
    with pytest.raises(CatalogError, match="unknown provider"):
        await build_runtime(settings)
