"""Catalog-driven validation of POST /generate bodies (API.md §3): every rejection is 422
INVALID_PARAMS naming the field with a human reason, and accepted params are stored with
the model's defaults applied."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.audit import assert_ledger_consistent, generation_count, ledger_entry_count
from tests.factories import AccountWithKey, account_with_key
from vivix.runtime import Runtime

GENERATE = "/api/v1/generate"
IMAGE = "vivix-local-image"
VIDEO = "vivix-local-video"
AUDIO = "vivix-local-audio"
GROK = "grok-imagine-image-quality"
WAN = "wan-2.7-text-to-video"
SEEDREAM = "seedream-4"
SEED_MAX = 2**32 - 1


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    # fal serves grok, wan and seedream: every model routes, so valid bodies get 201.
    return {"providers": {"fal": {"api_key": "test-fal-key"}}}


async def public_dns(host: str, port: int, /) -> list[str]:
    """Stands in for the internet's DNS: every name is a public address."""
    return ["93.184.215.14"]


@pytest.fixture
async def acct(runtime: Runtime) -> AccountWithKey:
    runtime.resolver = public_dns  # reference image hosts are resolved at submit
    return await account_with_key(runtime, calls_per_minute=100_000, concurrent_jobs=100_000)


def body_of(model: str, **params: Any) -> dict[str, Any]:
    return {"model": model, "prompt": "a lighthouse in fog", **params}


async def submit(
    client: httpx.AsyncClient, acct: AccountWithKey, body: dict[str, Any]
) -> httpx.Response:
    return await client.post(GENERATE, json=body, headers=acct.headers)


async def assert_rejected(
    client: httpx.AsyncClient, acct: AccountWithKey, body: dict[str, Any], field: str
) -> str:
    """422 INVALID_PARAMS naming `field`; returns the reason."""
    response = await submit(client, acct, body)
    assert response.status_code == 422, (body, response.text)
    error = response.json()
    assert error["error"] == "INVALID_PARAMS"
    assert error["field"] == field, (body, error)
    reason = error["reason"]
    assert isinstance(reason, str)
    assert len(reason) > 5
    assert field in error["message"]
    assert error["next"]
    return reason


async def accepted_params(
    client: httpx.AsyncClient, acct: AccountWithKey, body: dict[str, Any]
) -> dict[str, Any]:
    """Submit `body` (must be accepted) and read back the stored generation."""
    response = await submit(client, acct, body)
    assert response.status_code == 201, (body, response.text)
    generation_id = response.json()["generation_id"]
    read = await client.get(f"/api/v1/generations/{generation_id}", headers=acct.headers)
    assert read.status_code == 200
    stored: dict[str, Any] = read.json()
    return stored


class NothingStored:
    """Rejections leave no row and no ledger entry behind."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def __aenter__(self) -> None:
        self.before = (await generation_count(self.runtime), await ledger_entry_count(self.runtime))

    async def __aexit__(self, *exc: object) -> None:
        if exc[0] is None:
            after = (await generation_count(self.runtime), await ledger_entry_count(self.runtime))
            assert after == self.before
            await assert_ledger_consistent(self.runtime)


# -- unknown params ----------------------------------------------------------------------


async def test_param_the_model_does_not_take_is_rejected_naming_it(
    runtime: Runtime, client: httpx.AsyncClient, acct: AccountWithKey
) -> None:
    async with NothingStored(runtime):
        for body, field in [
            (body_of(IMAGE, colour="red"), "colour"),
            (body_of(IMAGE, duration=5), "duration"),
            (body_of(IMAGE, audio=True), "audio"),
            (body_of(GROK, seed=1), "seed"),
            (body_of(GROK, reference_images=["https://example.com/a.png"]), "reference_images"),
            (body_of(AUDIO, resolution="1K"), "resolution"),
            (body_of(WAN, number_results=1), "number_results"),
            (body_of(IMAGE, Prompt="x"), "Prompt"),
        ]:
            reason = await assert_rejected(client, acct, body, field)
            assert "not a param" in reason


# -- types -------------------------------------------------------------------------------


async def test_value_of_the_wrong_type_is_rejected_naming_the_field(
    runtime: Runtime, client: httpx.AsyncClient, acct: AccountWithKey
) -> None:
    async with NothingStored(runtime):
        for body, field in [
            (body_of(VIDEO, duration="5"), "duration"),
            (body_of(VIDEO, duration=5.5), "duration"),
            (body_of(VIDEO, duration=True), "duration"),
            (body_of(VIDEO, duration=[5]), "duration"),
            (body_of(VIDEO, audio="true"), "audio"),
            (body_of(VIDEO, audio=1), "audio"),
            (body_of(VIDEO, audio=0), "audio"),
            (body_of(IMAGE, number_results=True), "number_results"),
            (body_of(IMAGE, number_results="2"), "number_results"),
            (body_of(IMAGE, seed="123"), "seed"),
            (body_of(IMAGE, seed=1.5), "seed"),
            (body_of(IMAGE, aspect_ratio=1), "aspect_ratio"),
            (body_of(IMAGE, aspect_ratio=["1:1"]), "aspect_ratio"),
            (body_of(SEEDREAM, reference_images="https://example.com/a.png"), "reference_images"),
            (body_of(SEEDREAM, reference_images=[1]), "reference_images"),
            (body_of(SEEDREAM, reference_images={"url": "https://x.io/a"}), "reference_images"),
            ({"model": IMAGE, "prompt": 42}, "prompt"),
            ({"model": IMAGE, "prompt": ["a"]}, "prompt"),
            ({"model": 5, "prompt": "x"}, "model"),
            ({"model": [IMAGE], "prompt": "x"}, "model"),
        ]:
            await assert_rejected(client, acct, body, field)


async def test_whole_number_written_as_float_counts_as_an_integer(
    client: httpx.AsyncClient, acct: AccountWithKey
) -> None:
    stored = await accepted_params(client, acct, body_of(VIDEO, duration=4.0))
    assert stored["params"]["duration"] == 4
    assert isinstance(stored["params"]["duration"], int)


# -- ranges ------------------------------------------------------------------------------


async def test_value_out_of_the_models_range_is_rejected(
    runtime: Runtime, client: httpx.AsyncClient, acct: AccountWithKey
) -> None:
    async with NothingStored(runtime):
        for body, field in [
            (body_of(WAN, duration=11), "duration"),
            (body_of(WAN, duration=1), "duration"),
            (body_of(VIDEO, duration=0), "duration"),
            (body_of(AUDIO, duration=31), "duration"),
            (body_of(IMAGE, number_results=5), "number_results"),
            (body_of(IMAGE, number_results=0), "number_results"),
            (body_of(IMAGE, number_results=-1), "number_results"),
            (body_of(IMAGE, seed=-1), "seed"),
            (body_of(IMAGE, seed=SEED_MAX + 1), "seed"),
            (body_of(IMAGE, seed=10**40), "seed"),
        ]:
            reason = await assert_rejected(client, acct, body, field)
            assert "between" in reason


async def test_values_at_the_edges_of_the_range_are_accepted(
    client: httpx.AsyncClient, acct: AccountWithKey
) -> None:
    for body, name, value in [
        (body_of(WAN, duration=10), "duration", 10),
        (body_of(WAN, duration=2), "duration", 2),
        (body_of(IMAGE, number_results=4), "number_results", 4),
        (body_of(IMAGE, number_results=1), "number_results", 1),
        (body_of(IMAGE, seed=0), "seed", 0),
        (body_of(IMAGE, seed=SEED_MAX), "seed", SEED_MAX),
    ]:
        stored = await accepted_params(client, acct, body)
        assert stored["params"][name] == value


# -- prompt --------------------------------------------------------------------------------


async def test_prompt_over_2000_characters_is_rejected(
    runtime: Runtime, client: httpx.AsyncClient, acct: AccountWithKey
) -> None:
    async with NothingStored(runtime):
        reason = await assert_rejected(client, acct, body_of(IMAGE, prompt="a" * 2001), "prompt")
        assert "2001" in reason
        assert "2000" in reason
        await assert_rejected(client, acct, body_of(GROK, prompt="é" * 2001), "prompt")


async def test_prompt_of_exactly_2000_characters_is_accepted(
    client: httpx.AsyncClient, acct: AccountWithKey
) -> None:
    stored = await accepted_params(client, acct, body_of(IMAGE, prompt="a" * 2000))
    assert stored["params"]["prompt"] == "a" * 2000
    # Characters, not bytes: 2000 two-byte characters are 4000 bytes of UTF-8.
    stored = await accepted_params(client, acct, body_of(GROK, prompt="é" * 2000))
    assert stored["params"]["prompt"] == "é" * 2000


async def test_prompt_is_trimmed_before_the_length_check_and_stored_trimmed(
    client: httpx.AsyncClient, acct: AccountWithKey
) -> None:
    padded = "  \n\t" + "b" * 2000 + " \n "
    stored = await accepted_params(client, acct, body_of(IMAGE, prompt=padded))
    assert stored["params"]["prompt"] == "b" * 2000
    stored = await accepted_params(client, acct, body_of(IMAGE, prompt="  a cat  "))
    assert stored["params"]["prompt"] == "a cat"


async def test_empty_or_whitespace_only_prompt_is_rejected(
    runtime: Runtime, client: httpx.AsyncClient, acct: AccountWithKey
) -> None:
    async with NothingStored(runtime):
        for prompt in ["", " ", "   \n\t  ", "\u3000"]:
            await assert_rejected(client, acct, body_of(IMAGE, prompt=prompt), "prompt")
        await assert_rejected(client, acct, body_of(IMAGE, prompt="a\x00b"), "prompt")


async def test_missing_model_or_prompt_is_rejected_naming_it(
    runtime: Runtime, client: httpx.AsyncClient, acct: AccountWithKey
) -> None:
    async with NothingStored(runtime):
        await assert_rejected(client, acct, {"prompt": "a cat"}, "model")
        await assert_rejected(client, acct, {"model": None, "prompt": "a cat"}, "model")
        await assert_rejected(client, acct, {}, "model")
        for model in (IMAGE, VIDEO, AUDIO, GROK, WAN, SEEDREAM):
            await assert_rejected(client, acct, {"model": model}, "prompt")
            await assert_rejected(client, acct, {"model": model, "prompt": None}, "prompt")
        # A missing prompt is reported even when other fields are fine.
        await assert_rejected(client, acct, {"model": IMAGE, "resolution": "2K"}, "prompt")


# -- enums ---------------------------------------------------------------------------------


async def test_value_outside_the_models_enum_is_rejected(
    runtime: Runtime, client: httpx.AsyncClient, acct: AccountWithKey
) -> None:
    async with NothingStored(runtime):
        for body, field in [
            (body_of(IMAGE, aspect_ratio="3:2"), "aspect_ratio"),
            (body_of(IMAGE, aspect_ratio="16 : 9"), "aspect_ratio"),
            (body_of(IMAGE, resolution="720p"), "resolution"),
            (body_of(IMAGE, resolution="1k"), "resolution"),
            (body_of(IMAGE, output_format="gif"), "output_format"),
            (body_of(WAN, resolution="2160p"), "resolution"),
            (body_of(WAN, resolution="4K"), "resolution"),
            (body_of(AUDIO, output_format="png"), "output_format"),
        ]:
            reason = await assert_rejected(client, acct, body, field)
            assert "one of" in reason


async def test_reason_for_a_bad_enum_lists_the_allowed_values(
    client: httpx.AsyncClient, acct: AccountWithKey
) -> None:
    reason = await assert_rejected(client, acct, body_of(WAN, resolution="4K"), "resolution")
    assert "720p" in reason
    assert "1080p" in reason


# -- reference images ----------------------------------------------------------------------


async def test_more_than_three_reference_images_are_rejected(
    runtime: Runtime, client: httpx.AsyncClient, acct: AccountWithKey
) -> None:
    urls = [f"https://example.com/{i}.png" for i in range(4)]
    async with NothingStored(runtime):
        reason = await assert_rejected(
            client, acct, body_of(SEEDREAM, reference_images=urls), "reference_images"
        )
        assert "3" in reason
    stored = await accepted_params(client, acct, body_of(SEEDREAM, reference_images=urls[:3]))
    assert stored["params"]["reference_images"] == urls[:3]


async def test_reference_image_that_is_not_an_http_url_is_rejected(
    runtime: Runtime, client: httpx.AsyncClient, acct: AccountWithKey
) -> None:
    async with NothingStored(runtime):
        for url in [
            "ftp://example.com/a.png",
            "javascript:alert(1)",
            "file:///etc/passwd",
            "not a url",
            "data:image/png;base64,iVBORw0KGgo=",
            "http://",
            "https:///path-only",
            "//example.com/a.png",
            "https://exa mple.com/a.png",
            "https://example.com/a.png\n",
            "https://example.com/\x00.png",
            "https://user:secret@example.com/a.png",
            "http://example.com:99999/a.png",
            "https://example.com/" + "a" * 2048,
            "",
        ]:
            body = body_of(SEEDREAM, reference_images=["https://example.com/ok.png", url])
            reason = await assert_rejected(client, acct, body, "reference_images")
            assert "item 1" in reason


async def test_http_and_https_reference_images_are_accepted(
    client: httpx.AsyncClient, acct: AccountWithKey
) -> None:
    urls = ["http://example.com/a.png", "HTTPS://cdn.example.org:8443/b.jpg?x=1#y"]
    stored = await accepted_params(client, acct, body_of(SEEDREAM, reference_images=urls))
    assert stored["params"]["reference_images"] == urls
    stored = await accepted_params(client, acct, body_of(SEEDREAM, reference_images=[]))
    assert stored["params"]["reference_images"] == []


# -- metadata ------------------------------------------------------------------------------


async def test_metadata_breaking_the_limits_is_rejected(
    runtime: Runtime, client: httpx.AsyncClient, acct: AccountWithKey
) -> None:
    async with NothingStored(runtime):
        for metadata in [
            {f"k{i}": "v" for i in range(17)},
            {"k" * 65: "v"},
            {"k": "v" * 513},
            {"": "v"},
            {"k": 1},
            {"k": None},
            {"k": True},
            {"k": ["v"]},
            {"k": {"nested": "v"}},
            {"k": "a\x00b"},
            {"a\x00b": "v"},
            ["k", "v"],
            "k=v",
            42,
        ]:
            await assert_rejected(client, acct, body_of(IMAGE, metadata=metadata), "metadata")


async def test_metadata_at_the_limits_is_stored_and_echoed(
    client: httpx.AsyncClient, acct: AccountWithKey
) -> None:
    metadata = {f"k{i}": f"v{i}" for i in range(15)}
    metadata["k" * 64] = "v" * 512
    stored = await accepted_params(client, acct, body_of(IMAGE, metadata=metadata))
    assert stored["metadata"] == metadata
    assert "metadata" not in stored["params"]
    stored = await accepted_params(client, acct, body_of(IMAGE, metadata=None))
    assert stored["metadata"] == {}


# -- negative_prompt -----------------------------------------------------------------------


async def test_negative_prompt_is_dropped_silently_for_models_without_it(
    client: httpx.AsyncClient, acct: AccountWithKey
) -> None:
    for model in (GROK, WAN, AUDIO):
        stored = await accepted_params(
            client,
            acct,
            body_of(model, negative_prompt="blurry " * 70),  # 490 chars
        )
        assert "negative_prompt" not in stored["params"]


async def test_negative_prompt_is_still_checked_for_models_without_it(
    runtime: Runtime, client: httpx.AsyncClient, acct: AccountWithKey
) -> None:
    async with NothingStored(runtime):
        for model in (GROK, AUDIO, IMAGE):
            for value in ("x" * 501, 5, ["x"], "a\x00"):
                await assert_rejected(
                    client, acct, body_of(model, negative_prompt=value), "negative_prompt"
                )


async def test_negative_prompt_is_kept_for_models_that_take_it(
    client: httpx.AsyncClient, acct: AccountWithKey
) -> None:
    stored = await accepted_params(client, acct, body_of(IMAGE, negative_prompt=" blurry "))
    assert stored["params"]["negative_prompt"] == "blurry"
    stored = await accepted_params(client, acct, body_of(VIDEO, negative_prompt="n" * 500))
    assert stored["params"]["negative_prompt"] == "n" * 500


# -- defaults and seeds --------------------------------------------------------------------


async def test_defaults_from_the_schema_are_applied_and_shown(
    client: httpx.AsyncClient, acct: AccountWithKey
) -> None:
    stored = await accepted_params(client, acct, body_of(IMAGE, metadata={"job": "7"}))
    seed = stored["params"].pop("seed")
    assert stored["params"] == {
        "prompt": "a lighthouse in fog",
        "aspect_ratio": "1:1",
        "resolution": "1K",
        "number_results": 1,
        "output_format": "png",
    }
    assert isinstance(seed, int)
    assert 0 <= seed <= SEED_MAX
    assert stored["metadata"] == {"job": "7"}

    wan = await accepted_params(client, acct, body_of(WAN))
    assert wan["params"] == {
        "prompt": "a lighthouse in fog",
        "duration": 5,
        "resolution": "1080p",
        "audio": False,
    }
    assert wan["credits_estimate"] == 480 + 72 * 5

    grok = await accepted_params(client, acct, body_of(GROK))
    assert grok["params"] == {
        "prompt": "a lighthouse in fog",
        "aspect_ratio": "1:1",
        "resolution": "2K",
        "number_results": 1,
    }
    assert grok["credits_estimate"] == 140


async def test_explicit_null_for_an_optional_param_means_its_default(
    client: httpx.AsyncClient, acct: AccountWithKey
) -> None:
    stored = await accepted_params(
        client, acct, body_of(VIDEO, aspect_ratio=None, duration=None, audio=None)
    )
    assert stored["params"]["aspect_ratio"] == "16:9"
    assert stored["params"]["duration"] == 5
    assert stored["params"]["audio"] is False


async def test_given_params_override_the_defaults(
    client: httpx.AsyncClient, acct: AccountWithKey
) -> None:
    body = body_of(VIDEO, aspect_ratio="9:16", resolution="1080p", duration=3, audio=True, seed=7)
    stored = await accepted_params(client, acct, body)
    assert stored["params"] == {
        "prompt": "a lighthouse in fog",
        "aspect_ratio": "9:16",
        "resolution": "1080p",
        "duration": 3,
        "audio": True,
        "seed": 7,
    }
    assert stored["credits_estimate"] == 8 + 4 * 3


async def test_random_seed_is_recorded_when_omitted(
    client: httpx.AsyncClient, acct: AccountWithKey
) -> None:
    seeds = []
    for model in (IMAGE, VIDEO, AUDIO, SEEDREAM, IMAGE):
        stored = await accepted_params(client, acct, body_of(model))
        seed = stored["params"]["seed"]
        assert isinstance(seed, int)
        assert 0 <= seed <= SEED_MAX
        seeds.append(seed)
    assert len(set(seeds)) > 1  # drawn at random, not a constant default
    for model in (GROK, WAN):
        stored = await accepted_params(client, acct, body_of(model))
        assert "seed" not in stored["params"]
